"""`python -m backend`: serve on PORT (default 8080) until SIGTERM/SIGINT.

On the first SIGTERM (or SIGINT) the listening socket closes at once (new connections
are refused) and in-flight requests get SHUTDOWN_TIMEOUT seconds (default 300, the
seed's srv.Shutdown(ctx 300s)) to finish. A second signal does not shorten that: like
the seed's Go server, which reads the first signal and no other, the backend logs it
and keeps draining; SIGKILL is the way to force. Exit 0 when every in-flight request
finished, 1 when some were cut at the deadline.

aiohttp's numbers (aiohttp 3.14, measured: tests/test_backend.py): a handler still
running at shutdown is waited for `shutdown_timeout`, then aiohttp asks it to stop
and waits `shutdown_timeout` again before the handler task is really cancelled, so
a sleeping handler runs for 2 x shutdown_timeout. We pass SHUTDOWN_TIMEOUT / 2 so
that an in-flight request gets SHUTDOWN_TIMEOUT, as the seed's Go server did.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys

import uvloop
from aiohttp import web

from applog import LineBuffer

from .server import SHUTDOWN, build_app


def _raise_fd_limit() -> None:
    # Each in-flight request holds a socket: 10,000 of them need more than the usual
    # soft limit of 1024 descriptors. The hard limit is the ceiling we may take.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ConfigError(ValueError):
    pass


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{name}={raw!r} must be an integer {low}..{high}")
    return int(raw)


async def serve(
    app: web.Application,
    host: str | None,
    port: int,
    shutdown_timeout: int,
    lines: LineBuffer,
    hostname: str,
) -> int:
    """Serve until the first signal, then drain; the exit code."""
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours below: aiohttp's would abort the drain on a 2nd signal
        shutdown_timeout=shutdown_timeout / 2,  # aiohttp waits it twice: see above
        # Without it aiohttp (>= 3.7) lets a handler run on after its client left:
        # the seed's handler returns on r.Context().Done(), and so do ours.
        handler_cancellation=True,
        access_log=None,
    )
    await runner.setup()
    # backlog: 10,000 clients connecting at once overflow the default 128
    await web.TCPSite(runner, host, port, backlog=4096).start()
    lines.write(
        "listening",
        {"port": port, "hostname": hostname, "shutdown_timeout_s": shutdown_timeout},
        now=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            lines.write(
                "signal_ignored",
                {"signal": sig.name, "reason": "already draining; SIGKILL forces"},
                level="WARNING",
                now=True,
            )
            return
        app[SHUTDOWN].begin(shutdown_timeout)
        lines.write(
            "shutdown_started", {"signal": sig.name, "timeout_s": shutdown_timeout}, now=True
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    await runner.cleanup()
    cut = app[SHUTDOWN].cut
    lines.write("stopped", {"cut_at_shutdown_timeout": cut}, now=True)
    return 1 if cut else 0


def main() -> int:
    try:
        port = _env_int("PORT", 8080, 1, 65535)
        shutdown_timeout = _env_int("SHUTDOWN_TIMEOUT", 300, 0, 86_400)
    except ConfigError as exc:
        print(f"backend: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("BIND_HOST") or None  # None: every interface
    hostname = os.environ.get("HOSTNAME") or socket.gethostname()
    # every line through one buffer: the per-request lines in batches, the rest at once
    # and in order with them
    lines = LineBuffer("backend")
    _raise_fd_limit()
    app = build_app(hostname, lines)
    # uvloop: the event loop in C (libuv), about 15% more requests per second than
    # asyncio's own loop here (benchmarks/RESULTS.md)
    return uvloop.run(serve(app, host, port, shutdown_timeout, lines, hostname))


if __name__ == "__main__":
    sys.exit(main())
