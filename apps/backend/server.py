"""The backend: makes the in-flight requests a gateway termination must not cut (seed 003 §3).

GET /sleep?seconds=N   answers `slept Ns` after N seconds (N integer 0..600)
GET /stream?chunks=N&interval_ms=M   N chunked lines `chunk i @ Tms`, each flushed
GET /ws                WebSocket: each text message is echoed back until the client closes
GET /                  {"pod": "<HOSTNAME>"}

HTTP/1.1 itself is `http1` (why not aiohttp: there); WebSockets are `websocket`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from applog import LineBuffer

from . import websocket as ws
from .http1 import SHUTDOWN_DEADLINE, Handler, Request, Response

Route = Callable[[Request, Response], Awaitable[None]]

MAX_SLEEP_S = 600
#: The experiment's request-id header (the lab's registry names the same one; the apps
#: do not import the lab, a test keeps the two equal).
REQUEST_ID_HEADER = "X-Igw-Request-Id"
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
_WHOLE = re.compile(r"[0-9]{1,9}")
TEXT = "text/plain; charset=utf-8"


class BadQuery(Exception):
    """400 with a one-line reason: an experiment must not quietly measure the wrong thing
    (the seed's handler silently slept 1 s on a bad `seconds`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def int_param(
    query: dict[str, list[str]], name: str, low: int, high: int, default: int | None
) -> int:
    values = query.get(name, [])
    if len(values) > 1:
        # `?seconds=1&seconds=2`: which one the client meant is not ours to guess
        given = ", ".join(map(repr, values))
        raise BadQuery(f"{name} is given {len(values)} times ({given}); give it once")
    if not values:
        if default is None:
            raise BadQuery(f"{name} is required: an integer {low}..{high}")
        return default
    raw = values[0]
    if not _WHOLE.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadQuery(f"{name} must be an integer {low}..{high}, got {raw!r}")
    return int(raw)


def query_of(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.query, keep_blank_values=True)


async def sleep(request: Request, response: Response) -> None:
    seconds = int_param(query_of(request), "seconds", 0, MAX_SLEEP_S, default=None)
    await asyncio.sleep(seconds)
    response.send(200, b"slept %ds\n" % seconds)


async def stream(request: Request, response: Response) -> None:
    query = query_of(request)
    chunks = int_param(query, "chunks", 1, 100_000, default=10)
    interval_ms = int_param(query, "interval_ms", 0, 60_000, default=1000)
    started = time.monotonic()
    response.start_chunked(200, TEXT)
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval_ms / 1000)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        # each chunk goes to the transport as it is written: Envoy sees each one at
        # once (the Go seed needed an explicit Flush for the same effect)
        await response.write_chunk(f"chunk {i} @ {elapsed_ms}ms\n".encode())
    response.end_chunked()


#: The longest a WebSocket may stay silent before the backend closes it (1001).
WS_IDLE_S = 60.0


async def websocket(request: Request, response: Response) -> None:
    """Echo every text message; the client decides when the session ends (the load
    driver sends one each interval and closes normally after its last echo)."""
    if not request.upgrade:
        response.send(426, b"a WebSocket upgrade is required\n", headers=[("Upgrade", "websocket")])
        return
    session = ws.accept(request, response)
    if session is None:
        return
    try:
        while (text := await session.receive(WS_IDLE_S)) is not None:
            session.send_text(text)
    except TimeoutError:
        session.close(1001, "idle")


def whoami(hostname: str) -> Route:
    body = json.dumps({"pod": hostname}).encode()

    async def handle(_: Request, response: Response) -> None:
        response.send(200, body, "application/json; charset=utf-8")

    return handle


def refusal_log(hostname: str, lines: LineBuffer) -> Callable[[str, int, str], None]:
    """The line for a request head refused before routing (400, 431): no handler ran,
    and it may carry no request id, but the server still says it answered."""

    def log(remote: str, status: int, reason: str) -> None:
        lines.write(
            "request_refused",
            {"remote": remote, "hostname": hostname, "status": status, "reason": reason},
            level="WARNING",
        )

    return log


def idle_close_log(hostname: str, lines: LineBuffer) -> Callable[[str, float], None]:
    """The line for each keep-alive connection the server closes for idleness: a
    client (the gateway's Envoy) that sends on it at that moment gets a reset with no
    backend line for its request, and this line is the backend's word on it."""

    def log(peer: str, idle_s: float) -> None:
        lines.write(
            "idle_connection_closed",
            {"peer": peer, "hostname": hostname, "idle_s": f"{idle_s:.3f}"},
        )

    return log


def build_handler(hostname: str, lines: LineBuffer) -> Handler:
    """Every request: routed, answered, and logged in one logfmt line, including those
    the client cut (499) and those the shutdown deadline cut (503)."""
    routes: dict[str, Route] = {
        "/sleep": sleep,
        "/stream": stream,
        "/ws": websocket,
        "/": whoami(hostname),
    }

    async def handle(request: Request, response: Response) -> None:
        started_wall = time.time()
        started = time.monotonic()
        msg, level, error, status = "request", "INFO", "", 500
        try:
            route = routes.get(request.path)
            if route is None:
                response.send(404, b"not found\n")
            elif request.method not in ("GET", "HEAD"):
                response.send(405, b"GET only\n", headers=[("Allow", "GET, HEAD")])
            else:
                await route(request, response)
            status = response.status
        except BadQuery as exc:
            response.send(400, exc.reason.encode() + b"\n")
            status = 400
        except asyncio.CancelledError:
            if response.cancelled_by == SHUTDOWN_DEADLINE:
                status, msg = 503, "cancelled_at_shutdown_timeout"
            else:
                status, msg = 499, "client_disconnected"
            raise
        except Exception as exc:  # a bug: logged with the request; the client gets a 500
            status, msg, level, error = response.status or 500, "handler_failed", "ERROR", repr(exc)
        finally:
            fields: dict[str, str | int] = {
                # the experiment's request id, joined with HAProxy's and Envoy's lines
                "request_id": request.header(_REQUEST_ID) or "",
                "method": request.method,
                "path": request.target,
                "remote": request.remote,
                "hostname": hostname,
                "status": status,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "started": lines.iso_ms(started_wall),
            }
            if error:
                fields["error"] = error
            lines.write(msg, fields, level=level)

    return handle
