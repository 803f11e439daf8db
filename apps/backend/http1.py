"""HTTP/1.1 for the backend: an asyncio protocol on httptools (llhttp, the parser Node.js
uses), with the few server semantics the experiment rests on, stated here and tested in
tests/test_backend_http1.py (and through the routes in tests/test_backend.py).

Why not aiohttp's web server, as hc uses: the backend must not be what limits a run, and
aiohttp's request, response and router objects cost about 50 µs a request, a third of
the seed's Go server's throughput (benchmarks/RESULTS.md). This layer does only what
the backend's four routes need.

Semantics (those of the seed's Go net/http server where it has one):
- keep-alive unless the client asks otherwise (HTTP/1.0 without `keep-alive`, or
  `Connection: close`); pipelined requests are answered in order, one at a time.
- a client that goes away cancels its request's handler with `CLIENT_GONE`
  (Go: `r.Context().Done()`); a handler cut by the shutdown deadline is cancelled with
  `SHUTDOWN_DEADLINE`, so the handler can tell the two apart.
- graceful drain (Go's `Server.Shutdown`): the caller closes the listener; idle
  connections close at once; a busy one answers its current request with
  `Connection: close` and closes; at the deadline what is left is cancelled and closed.
- an idle keep-alive connection is closed after `keepalive_s` (aiohttp's 75 s, which
  the backend had before; Envoy's upstream pool notices the close and reconnects).
- a request head over `MAX_HEAD_BYTES` is refused with 431, an unparsable one with 400;
  both close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from types import MappingProxyType
from typing import cast

import httptools

#: The cancel message of a handler whose client went away.
CLIENT_GONE = "client_gone"
#: The cancel message of a handler still running at the shutdown deadline.
SHUTDOWN_DEADLINE = "shutdown_deadline"

#: The largest request line plus headers accepted (Go's DefaultMaxHeaderBytes is 1 MiB;
#: nothing the experiment sends is over 1 KiB).
MAX_HEAD_BYTES = 64 * 1024
#: Reason phrases by status code (a lookup, not an enum call per answer).
_PHRASES = MappingProxyType({int(s): s.phrase for s in HTTPStatus})
#: Pipelined requests waiting behind the current one before the connection stops reading.
MAX_QUEUED = 16


class Request:
    """One request's head. `target` is the request target as sent (path and query)."""

    __slots__ = ("headers", "keep_alive", "method", "remote", "target", "upgrade")

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        remote: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.remote = remote
        self.keep_alive = keep_alive
        self.upgrade = upgrade

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: bytes) -> str | None:
        """The last value of header `name` (given in lower case), or None."""
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return None if found is None else found.decode("latin-1")


class Response:
    """How a handler answers: `send` a whole body, or `start_chunked`, `write_chunk`
    (awaits while the client is slow to read) and `end_chunked`; or, for an upgrade
    request, `take_over` the connection. `status` is 0 until an answer has started."""

    __slots__ = ("_chunked", "_conn", "_head_only", "cancelled_by", "ended", "status")

    def __init__(self, conn: HttpConnection, head_only: bool) -> None:
        self._conn = conn
        self._head_only = head_only
        self._chunked = False
        self.status = 0
        self.ended = False
        #: CLIENT_GONE or SHUTDOWN_DEADLINE once the connection cancelled the handler
        self.cancelled_by: str | None = None

    def _head(self, status: int, headers: str) -> bytes:
        """The status line, Date, `headers` (each ending in CRLF) and the blank line."""
        if self.status:
            raise RuntimeError(f"the answer has started already (status {self.status})")
        self.status = status
        close = "" if self._conn.keep_alive else "Connection: close\r\n"
        return (
            f"HTTP/1.1 {status} {_PHRASES[status]}\r\nDate: {self._conn.date()}\r\n"
            f"{headers}{close}\r\n"
        ).encode("latin-1")

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        head = self._head(
            status, f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
        )
        self._conn.write(head if self._head_only else head + body)
        self.ended = True

    def start_chunked(self, status: int, content_type: str) -> None:
        self._chunked = True
        self._conn.write(
            self._head(status, f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n")
        )

    async def write_chunk(self, data: bytes) -> None:
        if not self._chunked:
            raise RuntimeError("start_chunked first")
        if data and not self._head_only:
            self._conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self._conn.writable()

    def end_chunked(self) -> None:
        if not self._head_only:
            self._conn.write(b"0\r\n\r\n")
        self.ended = True

    def take_over(self, status: int, head: bytes, receive: Callable[[bytes], None]) -> None:
        """Switch protocols: `head` (the 101 answer, built by the caller's protocol
        library) is written as is, every later byte from the client goes to `receive`,
        `write_raw` sends bytes, and the connection closes when the handler returns."""
        self.status = status
        self.ended = True
        self._conn.take_over(head, receive)

    def write_raw(self, data: bytes) -> None:
        """Bytes to the client as they are (after `take_over`)."""
        self._conn.write(data)


Handler = Callable[[Request, Response], Awaitable[None]]


class Connections:
    """A server's open connections: the shared clock for Date, the idle sweep, and the
    graceful drain. One per listening server; the protocol factory is `factory()`."""

    def __init__(
        self,
        handler: Handler,
        keepalive_s: float = 75.0,
        on_refused: Callable[[str, int, str], None] | None = None,
        on_idle_close: Callable[[str, float], None] | None = None,
    ) -> None:
        self.handler = handler
        self.keepalive_s = keepalive_s
        #: told (remote address, status, reason) of each head refused before any
        #: handler saw it: the server's one record of such a request
        self._on_refused = on_refused
        #: told (the peer's address:port, seconds idle) of each connection the idle
        #: sweep closes: a client that sends on it then loses the race with the close
        self._on_idle_close = on_idle_close
        self.draining = False
        self._open: set[HttpConnection] = set()
        self._all_closed: asyncio.Event | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._date_second = -1
        self._date = ""

    def factory(self) -> HttpConnection:
        return HttpConnection(self)

    def date(self) -> str:
        """The Date header, formatted once per second."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second, self._date = second, formatdate(second, usegmt=True)
        return self._date

    def __len__(self) -> int:
        return len(self._open)

    def refused(self, remote: str, status: int, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(remote, status, reason)

    def opened(self, conn: HttpConnection) -> None:
        self._open.add(conn)
        if self._sweep is None:
            self._schedule_sweep()

    def closed(self, conn: HttpConnection) -> None:
        self._open.discard(conn)
        if not self._open and self._all_closed is not None:
            self._all_closed.set()

    def _schedule_sweep(self) -> None:
        # one timer for all connections, not one per request
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(min(5.0, self.keepalive_s), self._close_stale)

    def _close_stale(self) -> None:
        self._sweep = None
        now = time.monotonic()
        oldest = now - self.keepalive_s
        for conn in list(self._open):
            if conn.idle_since is not None and conn.idle_since <= oldest:
                if self._on_idle_close is not None:
                    self._on_idle_close(conn.peer, round(now - conn.idle_since, 3))
                conn.close()
        if self._open:
            self._schedule_sweep()

    def begin_drain(self) -> None:
        """New answers say `Connection: close`; idle connections close now. The caller
        has closed the listener."""
        self.draining = True
        for conn in list(self._open):
            conn.keep_alive = False
            if conn.idle_since is not None:
                conn.close()

    async def drain(self, timeout_s: float) -> int:
        """Wait until every connection has closed or `timeout_s` passed; then cancel
        the handlers still running (SHUTDOWN_DEADLINE), let them log, and close every
        connection. The number of handlers cut."""
        self.begin_drain()
        self._all_closed = asyncio.Event()
        if self._open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
        running = [t for c in self._open if (t := c.cancel(SHUTDOWN_DEADLINE)) is not None]
        if running:
            await asyncio.wait(running, timeout=5.0)
        for conn in list(self._open):
            conn.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        return len(running)


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module's doc for its semantics)."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self.keep_alive = not connections.draining
        #: monotonic time since the connection has had nothing to do; None while busy
        self.idle_since: float | None = time.monotonic()
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        #: the peer as `address:port` (Envoy's %UPSTREAM_LOCAL_ADDRESS% names the same)
        self.peer = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._response: Response | None = None
        self._upgrade: Request | None = None
        self._upgrade_rest = b""  # bytes after an upgrade request's head
        self._upgrading = False  # from an upgrade request's head to its handler's take-over
        self._refusal: tuple[int, str] | None = None  # to answer once the current one is
        self._receive: Callable[[bytes], None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._closed = False

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but do its interface
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else ""
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self._connections.opened(self)

    def data_received(self, data: bytes) -> None:
        if self._receive is not None:  # switched protocols
            self._receive(data)
            return
        if self._upgrading:  # bytes for the protocol the handler is about to take over
            self._upgrade_rest += data
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._begin_upgrade(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised in HttpParserCallbackError
            if isinstance(exc.__context__, HttpHeadTooLarge):
                self._refuse(431, f"request head over {MAX_HEAD_BYTES} bytes\n")
            else:
                self._refuse(400, f"bad request: {exc}\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        self._connections.closed(self)
        self.cancel(CLIENT_GONE)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # ------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self.idle_since = None
        self._url = b""
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count(len(name) + len(value))

    def on_message_complete(self) -> None:
        parser = self._parser
        upgrade = parser.should_upgrade()
        request = Request(
            parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            self._headers,
            self._remote,
            parser.should_keep_alive() and not upgrade,
            upgrade,
        )
        if upgrade:
            self._upgrade = request  # data_received gets the bytes after the head
            return
        if self._task is None:
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= MAX_QUEUED and self.transport is not None:
                self.transport.pause_reading()

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HttpHeadTooLarge()

    # ------------------------------------------------------------ requests
    def _start(self, request: Request) -> None:
        if not request.keep_alive:
            self.keep_alive = False
        response = self._response = Response(self, head_only=request.method == "HEAD")
        self._task = asyncio.get_running_loop().create_task(
            self._connections.handler(request, response)
        )
        self._task.add_done_callback(self._finished)

    def _finished(self, _: asyncio.Task[None]) -> None:
        response = self._response
        self._task = self._response = None
        if self._closed or response is None:
            return
        if not response.ended:
            # the handler failed before answering or in the middle of a chunked body:
            # a 500 when nothing was sent yet, else the client sees the body cut
            self.keep_alive = False
            if not response.status:
                response.send(500, b"internal error\n")
        if self._refusal is not None and response.ended:
            self._send_refusal(*self._refusal)
            return
        if self._receive is not None or not self.keep_alive:
            self.close()
            return
        if self._queue:
            if len(self._queue) < MAX_QUEUED and not self._upgrading and self.transport:
                self.transport.resume_reading()
            self._start(self._queue.popleft())
        else:
            self.idle_since = time.monotonic()

    def _begin_upgrade(self, rest: bytes) -> None:
        """An upgrade request's head is complete: no HTTP request can follow it on this
        connection. It runs after the current one (a client may send it the moment the
        previous answer arrived, before that handler has quite finished); until its
        handler takes over, the connection stops reading and keeps what came."""
        request, self._upgrade = self._upgrade, None
        if request is None:
            self._refuse(400, "bad request: an upgrade without a complete request\n")
            return
        self._upgrading = True
        self._upgrade_rest = rest
        if self.transport is not None:
            self.transport.pause_reading()
        if self._task is None:
            self._start(request)
        else:
            self._queue.append(request)

    def take_over(self, head: bytes, receive: Callable[[bytes], None]) -> None:
        self._receive = receive
        self._upgrading = False
        self.write(head)
        rest, self._upgrade_rest = self._upgrade_rest, b""
        if rest:
            receive(rest)
        if self.transport is not None:
            self.transport.resume_reading()

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a head that cannot be served and close; after the current request's
        answer when one is running (closing now would cut it as if its client left)."""
        self.keep_alive = False
        self._queue.clear()
        self._refusal = (status, reason)
        if self._task is None:
            self._send_refusal(status, reason)
        elif self.transport is not None:
            self.transport.pause_reading()

    def _send_refusal(self, status: int, reason: str) -> None:
        Response(self, head_only=False).send(status, reason.encode())
        self._connections.refused(self._remote, status, reason.strip())
        self.close()

    # ------------------------------------------------------------ for Response
    def date(self) -> str:
        return self._connections.date()

    def write(self, data: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    async def writable(self) -> None:
        """Returns when the client has read enough to take more (or is gone)."""
        if self._closed:
            raise asyncio.CancelledError(CLIENT_GONE)
        if self._paused_writing:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable

    # ------------------------------------------------------------ lifecycle
    def cancel(self, reason: str) -> asyncio.Task[None] | None:
        """Cancel the running handler with `reason`; the task, or None if none runs."""
        task = self._task
        if task is None or task.done():
            return None
        if self._response is not None and self._response.cancelled_by is None:
            self._response.cancelled_by = reason
        task.cancel(reason)
        return task

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()


class HttpHeadTooLarge(Exception):
    """A request line and headers over MAX_HEAD_BYTES (raised from a parser callback)."""
