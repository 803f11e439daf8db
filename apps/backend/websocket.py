"""WebSocket sessions on the backend's HTTP/1.1 layer, with wsproto (the handshake and the
framing; RFC 6455) doing the protocol and this module only moving bytes and messages."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import (
    Request as Handshake,
)
from wsproto.utilities import RemoteProtocolError

from .http1 import Request, Response


class WebSocket:
    """A server-side session: `receive()` the client's text messages, `send_text`, and
    `close`. Pings are answered and a client's close is answered here."""

    def __init__(self, protocol: WSConnection, write: Callable[[bytes], None]) -> None:
        self._ws = protocol
        self._write = write
        self._messages: deque[str] = deque()
        self._parts: list[str] = []
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        """The bytes the client sent after the handshake."""
        try:
            self._ws.receive_data(data)
            events = list(self._ws.events())
        except RemoteProtocolError:
            self.close(1002, "protocol error")
            events = []
        for event in events:
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self._messages.append("".join(self._parts))
                    self._parts.clear()
            elif isinstance(event, Ping):
                self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self._ws.send(event.response()))
                self.closed = True
            # binary messages are not part of the echo: dropped
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self, timeout_s: float) -> str | None:
        """The next text message; None once the session is closed. TimeoutError when
        the client stays silent for `timeout_s`."""
        while not self._messages:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiter, timeout_s)
        return self._messages.popleft()

    def send_text(self, text: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(TextMessage(data=text)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self.closed = True


def _head(request: Request) -> bytes:
    """The request head as the client sent it, for wsproto's handshake parser."""
    lines = [f"{request.method} {request.target} HTTP/1.1".encode("latin-1")]
    lines.extend(k + b": " + v for k, v in request.headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def accept(request: Request, response: Response) -> WebSocket | None:
    """Complete the handshake of an upgrade request; None (and a 400 sent) when it is
    not a valid WebSocket handshake."""
    protocol = WSConnection(ConnectionType.SERVER)
    try:
        protocol.receive_data(_head(request))
        events = list(protocol.events())
    except RemoteProtocolError as exc:
        response.send(400, f"{exc}\n".encode())
        return None
    if not events or not isinstance(events[0], Handshake):
        response.send(400, b"not a WebSocket handshake\n")
        return None
    session = WebSocket(protocol, response.write_raw)
    response.take_over(101, protocol.send(AcceptConnection()), session.feed)
    return session
