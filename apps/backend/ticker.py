"""`python -m backend.ticker`: the backend's gRPC service, for the grpc_stream class.

/igw.v1.Ticker/Ticks  server streaming: the request is JSON `{"messages": N,
                      "interval_ms": M}`, the replies N messages `tick i @ Tms`, one
                      every M ms, then status OK
/grpc.health.v1.Health/Check  gRPC's health protocol (what a Kubernetes `grpc:` probe
                      calls): SERVING until the first signal, NOT_SERVING after

Messages are bytes as they are (no protobuf, no generated code): JSON in, text out.
The health reply is the one protobuf message the protocol fixes, two bytes written by
hand (field 1, varint: 1 SERVING, 2 NOT_SERVING).

Serves on PORT (default 9090) until SIGTERM/SIGINT, then as the HTTP backend does: new
streams are refused (grpcio's `stop(grace)`: its listener closes, its connections get
GOAWAY) and those in flight get SHUTDOWN_TIMEOUT seconds (default 300) to finish; a
second signal does not shorten that. Exit 0 when every stream finished, 1 when some
were cut at the deadline. Every call is logged in one logfmt line (`msg=request`, the
same keys as the HTTP backend's), including those the client cut
(`client_disconnected`, 499) and the deadline cut (`cancelled_at_shutdown_timeout`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from applog import LineBuffer

from .env import ConfigError, env_int
from .server import REQUEST_ID_HEADER

#: The service and its method (the lab's registry names the same; a test keeps the two
#: equal, as for the request-id header).
SERVICE = "igw.v1.Ticker"
TICKS = f"/{SERVICE}/Ticks"
HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING = b"\x08\x01"
NOT_SERVING = b"\x08\x02"
MAX_MESSAGES = 100_000
MAX_INTERVAL_MS = 60_000
_METADATA_KEY = REQUEST_ID_HEADER.lower()


class BadRequest(ValueError):
    """INVALID_ARGUMENT with a one-line reason, as the HTTP backend's 400."""


def ticks_request(raw: bytes) -> tuple[int, int]:
    """(messages, interval_ms) from a Ticks request, or BadRequest naming what is wrong."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise BadRequest(f"the request must be JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"messages", "interval_ms"})
    if unknown:
        raise BadRequest(f"unknown fields {unknown}: only messages, interval_ms")
    out = []
    for name, low, high, default in (
        ("messages", 1, MAX_MESSAGES, 10),
        ("interval_ms", 0, MAX_INTERVAL_MS, 1000),
    ):
        value = body.get(name, default)
        if type(value) is not int or not low <= value <= high:
            raise BadRequest(f"{name} must be an integer {low}..{high}, got {value!r}")
        out.append(value)
    return out[0], out[1]


@dataclass
class Ticker:
    """The service's state: whether it drains, when its deadline falls, what it cut."""

    hostname: str
    lines: LineBuffer
    #: monotonic time of the shutdown deadline, once draining
    deadline: float | None = None
    cut: int = 0
    #: calls whose handler is still running
    active: int = 0

    async def ticks(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        started_wall, started = time.time(), time.monotonic()
        request_id = dict(context.invocation_metadata() or ()).get(_METADATA_KEY, "")
        msg, status, code = "request", 200, grpc.StatusCode.OK
        sent = 0
        self.active += 1
        try:
            try:
                messages, interval_ms = ticks_request(raw)
            except BadRequest as exc:
                status, code = 400, grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(exc))
            for i in range(messages):
                if i:
                    await asyncio.sleep(interval_ms / 1000)
                elapsed_ms = int((time.monotonic() - started) * 1000)
                yield f"tick {i} @ {elapsed_ms}ms".encode()
                sent += 1
        except asyncio.CancelledError:
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.05:
                msg, status, code = "cancelled_at_shutdown_timeout", 503, grpc.StatusCode.CANCELLED
                self.cut += 1
            else:
                msg, status, code = "client_disconnected", 499, grpc.StatusCode.CANCELLED
            # not re-raised: the call is over either way, and grpcio would print the
            # cancellation's traceback for each stream it cut
        finally:
            self.active -= 1
            self.lines.write(
                msg,
                {
                    "request_id": request_id,
                    "method": "POST",
                    "path": TICKS,
                    "remote": context.peer() or "",
                    "hostname": self.hostname,
                    "status": status,
                    "grpc_status": code.name,
                    "messages": sent,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                    "started": self.lines.iso_ms(started_wall),
                },
            )

    async def check(self, _raw: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return SERVING if self.deadline is None else NOT_SERVING

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        # no serializers: requests and replies are bytes as they are
        return [
            grpc.method_handlers_generic_handler(
                SERVICE, {"Ticks": grpc.unary_stream_rpc_method_handler(self.ticks)}
            ),
            grpc.method_handlers_generic_handler(
                HEALTH_SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(self.check)}
            ),
        ]


async def serve(ticker: Ticker, address: str, shutdown_timeout: int) -> int:
    """Serve until the first signal, then drain; the exit code."""
    # SO_REUSEPORT off: a second server on the address must fail, not share it
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(ticker.handlers())
    if server.add_insecure_port(address) == 0:
        ticker.lines.write(
            "listen_failed", {"address": address, "error": "address in use"}, "ERROR", now=True
        )
        return 2
    await server.start()
    ticker.lines.write(
        "listening",
        {"address": address, "hostname": ticker.hostname, "shutdown_timeout_s": shutdown_timeout},
        now=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            ticker.lines.write(
                "signal_ignored",
                {"signal": sig.name, "reason": "already draining; SIGKILL forces"},
                level="WARNING",
                now=True,
            )
            return
        ticker.deadline = time.monotonic() + shutdown_timeout
        ticker.lines.write(
            "shutdown_started", {"signal": sig.name, "timeout_s": shutdown_timeout}, now=True
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    await server.stop(grace=shutdown_timeout)
    # the handlers the deadline cancelled log their lines after stop() returns
    for _ in range(100):
        if not ticker.active:
            break
        await asyncio.sleep(0.01)
    ticker.lines.write("stopped", {"cut_at_shutdown_timeout": ticker.cut}, now=True)
    return 1 if ticker.cut else 0


def main() -> int:
    try:
        port = env_int("PORT", 9090, 1, 65535)
        shutdown_timeout = env_int("SHUTDOWN_TIMEOUT", 300, 0, 86_400)
    except ConfigError as exc:
        print(f"backend.ticker: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("BIND_HOST") or "[::]"  # every interface
    hostname = os.environ.get("HOSTNAME") or socket.gethostname()
    lines = LineBuffer("backend")
    try:
        return asyncio.run(serve(Ticker(hostname, lines), f"{host}:{port}", shutdown_timeout))
    finally:
        lines.flush()


if __name__ == "__main__":
    sys.exit(main())
