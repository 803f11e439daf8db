"""The backend: makes the in-flight requests a gateway termination must not cut (seed 003 §3).

GET /sleep?seconds=N   answers `slept Ns` after N seconds (N integer 0..600)
GET /stream?chunks=N&interval_ms=M   N chunked lines `chunk i @ Tms`, each flushed
GET /ws                WebSocket: each text message is echoed back until the client closes
GET /                  {"pod": "<HOSTNAME>"}
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from applog import LineBuffer, iso_ms

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Shutdown:
    """The graceful stop, once a signal began it: when it must end, and what it cut.

    Tells a handler cancelled at the shutdown deadline apart from one whose client went
    away (aiohttp cancels both the same way)."""

    deadline: float | None = None  # time.monotonic() by which in-flight work must end
    cut: int = 0  # requests cancelled at the deadline

    def begin(self, timeout_s: float) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + timeout_s

    def at_deadline(self, slack_s: float = 0.5) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline - slack_s


SHUTDOWN = web.AppKey("shutdown", Shutdown)

MAX_SLEEP_S = 600
#: The experiment's request-id header (the lab's registry names the same one; the apps
#: do not import the lab, a test keeps the two equal).
REQUEST_ID_HEADER = "X-Igw-Request-Id"
_WHOLE = re.compile(r"[0-9]{1,9}")


class BadQuery(web.HTTPBadRequest):
    """400 with a one-line reason: an experiment must not quietly measure the wrong thing
    (the seed's handler silently slept 1 s on a bad `seconds`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(text=reason + "\n")


def int_param(request: web.Request, name: str, low: int, high: int, default: int | None) -> int:
    values = request.query.getall(name, [])
    if len(values) > 1:
        # `?seconds=1&seconds=2`: which one the client meant is not ours to guess
        given = ", ".join(map(repr, values))
        raise BadQuery(f"{name} is given {len(values)} times ({given}); give it once")
    raw = values[0] if values else None
    if raw is None:
        if default is None:
            raise BadQuery(f"{name} is required: an integer {low}..{high}")
        return default
    if not _WHOLE.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadQuery(f"{name} must be an integer {low}..{high}, got {raw!r}")
    return int(raw)


async def sleep(request: web.Request) -> web.Response:
    seconds = int_param(request, "seconds", 0, MAX_SLEEP_S, default=None)
    await asyncio.sleep(seconds)
    return web.Response(text=f"slept {seconds}s\n")


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int_param(request, "chunks", 1, 100_000, default=10)
    interval_ms = int_param(request, "interval_ms", 0, 60_000, default=1000)
    started = time.monotonic()
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval_ms / 1000)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        # write() hands the chunk to the transport at once: Envoy sees each one as it
        # is written (the Go seed needed an explicit Flush for the same effect).
        await response.write(f"chunk {i} @ {elapsed_ms}ms\n".encode())
    await response.write_eof()
    return response


#: The longest a WebSocket may stay silent before the backend closes it (1001).
WS_IDLE_S = 60.0


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo every text message; the client decides when the session ends (the load
    driver sends one each interval and closes normally after its last echo)."""
    ws = web.WebSocketResponse(receive_timeout=WS_IDLE_S)
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
    except TimeoutError:
        await ws.close(code=1001, message=b"idle")
    return ws


def whoami(hostname: str) -> Handler:
    async def handle(_: web.Request) -> web.Response:
        return web.json_response({"pod": hostname})

    return handle


def access_log(hostname: str, lines: LineBuffer) -> Callable[..., Awaitable[web.StreamResponse]]:
    """One logfmt line per request, including those the client cut (status 499)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started_wall = time.time()
        started = time.monotonic()
        status = 500
        msg = "request"
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            shutdown = request.app[SHUTDOWN]
            if shutdown.at_deadline():
                status, msg = 503, "cancelled_at_shutdown_timeout"
                shutdown.cut += 1
            else:
                status, msg = 499, "client_disconnected"
            raise
        finally:
            lines.write(
                msg,
                {
                    # the experiment's request id, joined with HAProxy's and Envoy's lines
                    "request_id": request.headers.get(REQUEST_ID_HEADER, ""),
                    "method": request.method,
                    "path": request.path_qs,
                    "remote": request.remote or "",
                    "hostname": hostname,
                    "status": status,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                    "started": iso_ms(started_wall),
                },
            )

    return middleware


def build_app(hostname: str, lines: LineBuffer) -> web.Application:
    app = web.Application(middlewares=[access_log(hostname, lines)])
    app[SHUTDOWN] = Shutdown()
    app.router.add_get("/sleep", sleep)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/", whoami(hostname))
    return app
