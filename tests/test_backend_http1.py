"""The backend's own HTTP/1.1 layer (apps/backend/http1.py) over real sockets: the server
semantics its module doc promises, each shown on `python -m backend` (or, for the idle
timeout, on the layer itself with a short timeout)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import BinaryIO

import aiohttp
import pytest

from backend.http1 import MAX_HEAD_BYTES, Connections, Request, Response
from helpers import Proc, Procs


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length body from a socket's file: (status, headers, body)."""
    status_line = f.readline()
    assert status_line, "the connection closed before an answer"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (nothing else arrives)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def connect(backend: Proc) -> socket.socket:
    return socket.create_connection((backend.host, backend.port), timeout=10)


def test_pipelined_requests_are_answered_in_order(procs: Procs) -> None:
    backend = procs.backend()
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(
            b"GET /sleep?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /sleep?seconds=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = [read_response(f) for _ in range(3)]
    # answered as they came: the 1 s sleep first, though the others were ready sooner
    assert [(status, body) for status, _, body in answers] == [
        (200, b"slept 1s\n"),
        (200, b"slept 0s\n"),
        (404, b"not found\n"),
    ]


@pytest.mark.parametrize(
    ("head", "closes"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ],
)
def test_keep_alive_unless_the_client_asks_otherwise(
    procs: Procs, head: bytes, closes: bool
) -> None:
    backend = procs.backend()
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(head)
        status, headers, _ = read_response(f)
        assert status == 200
        assert (headers.get("connection") == "close") is closes
        assert closed_within(s, 0.5) is closes


def test_at_the_signal_idle_connections_close_and_a_busy_one_after_its_answer(
    procs: Procs,
) -> None:
    """Go's Server.Shutdown: the idle keep-alive connection is closed at once, the busy
    one gets its answer (saying `Connection: close`) and is closed after it."""
    backend = procs.backend({"SHUTDOWN_TIMEOUT": "10"})
    with connect(backend) as idle, connect(backend) as busy, busy.makefile("rb") as busy_f:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with idle.makefile("rb") as idle_f:
            assert read_response(idle_f)[0] == 200
        busy.sendall(b"GET /sleep?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        backend.popen.send_signal(signal.SIGTERM)
        assert closed_within(idle, 0.5)
        status, headers, body = read_response(busy_f)
        assert (status, body, headers.get("connection")) == (200, b"slept 1s\n", "close")
        assert closed_within(busy, 0.5)
    assert backend.popen.wait(10) == 0


@pytest.mark.parametrize(
    ("head", "status", "named"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, b"not found"),
        (b"POST /sleep?seconds=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, b"GET"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426, b"WebSocket upgrade is required"),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            400,
            b"",  # no Sec-WebSocket-Key: wsproto refuses the handshake
        ),
        (b"NONSENSE\r\n\r\n", 400, b"bad request"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n",
            431,
            b"request head over",
        ),
    ],
)
def test_what_is_not_served_gets_its_status_and_a_reason(
    procs: Procs, head: bytes, status: int, named: bytes
) -> None:
    backend = procs.backend()
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(head)
        got, headers, body = read_response(f)
    assert got == status and named in body
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


def test_head_answers_the_headers_without_the_body(procs: Procs) -> None:
    backend = procs.backend({"HOSTNAME": "b-head"})
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line = f.readline()
        head_headers = {}
        while (line := f.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            head_headers[name.lower()] = value.strip()
        # the next bytes are the GET's answer, not a body of the HEAD
        status, _, body = read_response(f)
    assert b" 200 " in status_line and int(head_headers["content-length"]) == len(body)
    assert (status, body) == (200, b'{"pod": "b-head"}')


def test_a_stream_whose_client_leaves_ends_its_handler(procs: Procs) -> None:
    backend = procs.backend()
    with connect(backend) as s:
        s.sendall(b"GET /stream?chunks=100&interval_ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.35)
    time.sleep(0.5)
    backend.stop()
    [line] = backend.logfmt_lines("client_disconnected")
    assert line["path"] == "/stream?chunks=100&interval_ms=100" and line["status"] == "499"
    assert int(line["duration_ms"]) < 2000  # not the 10 s the stream would have taken


def test_a_websocket_ping_is_answered_and_a_close_is_returned(procs: Procs) -> None:
    backend = procs.backend()

    async def session() -> tuple[aiohttp.WSMsgType, int | None]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(backend.url + "/ws", autoping=False) as ws,
        ):
            await ws.ping(b"are you there")
            pong = await ws.receive(timeout=5)
            assert pong.data == b"are you there"
            await ws.close()
            return pong.type, ws.close_code

    assert asyncio.run(session()) == (aiohttp.WSMsgType.PONG, 1000)


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_s() -> None:
    async def answer(_: Request, response: Response) -> None:
        response.send(200, b"ok\n")

    told: list[tuple[str, float]] = []

    async def scenario() -> tuple[float, str]:
        connections = Connections(
            answer, keepalive_s=0.5, on_idle_close=lambda peer, s: told.append((peer, s))
        )
        server = await asyncio.get_running_loop().create_server(connections.factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        me = "{}:{}".format(*writer.get_extra_info("sockname"))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"ok\n")
        answered = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        idle = time.monotonic() - answered
        writer.close()
        server.close()
        assert len(connections) == 0
        return idle, me

    idle, me = asyncio.run(scenario())
    # closed by the sweep (every keepalive_s here), not before keepalive_s
    assert 0.45 <= idle <= 1.6, idle
    # and said, naming the client's own address and port (what Envoy logs as its
    # upstream local address), with how long it had been idle
    ((peer, idle_s),) = told
    assert peer == me and 0.45 <= idle_s <= 1.6


def test_garbage_behind_a_running_request_waits_for_its_answer(procs: Procs) -> None:
    """Closing at once would cut the running request as if its client had left."""
    backend = procs.backend()
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(b"GET /sleep?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\nNONSENSE\r\n\r\n")
        first, second = read_response(f), read_response(f)
        assert closed_within(s, 0.5)
    assert (first[0], first[2]) == (200, b"slept 1s\n")
    assert second[0] == 400 and b"bad request" in second[2]
    backend.stop()
    assert [line["status"] for line in backend.logfmt_lines("request")] == ["200"]
    assert backend.logfmt_lines("client_disconnected") == []
    # the refused head has its record too, though no handler saw it
    [refused] = backend.logfmt_lines("request_refused")
    assert refused["status"] == "400" and "bad request" in refused["reason"]


def test_an_upgrade_right_behind_a_request_runs_after_it(procs: Procs) -> None:
    """Envoy reuses a pooled connection for a WebSocket the moment the previous answer
    arrived, which can be before that handler has finished: the upgrade must wait its
    turn, not be refused (a lost `ws` request in the steady scenario, found by CI)."""
    backend = procs.backend()
    key = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key and its answer below
    with connect(backend) as s, s.makefile("rb") as f:
        s.sendall(
            b"GET /sleep?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert read_response(f)[:3:2] == (200, b"slept 1s\n")
        status_line = f.readline()
        headers = {}
        while (line := f.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        assert b" 101 " in status_line
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
        s.sendall(b"\x81\x82" + mask + payload)  # a masked text frame: "hi"
        assert f.read(4) == b"\x81\x02hi"  # echoed, unmasked
