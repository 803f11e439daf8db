"""`python -m backend`: serve on PORT (default 8080) until SIGTERM/SIGINT.

On the first SIGTERM (or SIGINT) the listening socket closes at once (new connections
are refused) and in-flight requests get SHUTDOWN_TIMEOUT seconds (default 300, the
seed's srv.Shutdown(ctx 300s)) to finish. A second signal does not shorten that: like
the seed's Go server, which reads the first signal and no other, the backend logs it
and keeps draining; SIGKILL is the way to force. Exit 0 when every in-flight request
finished, 1 when some were cut at the deadline. Idle keep-alive connections close at
the signal, busy ones after their answer (`Connection: close`): Go's Server.Shutdown.
An idle keep-alive connection closes after KEEPALIVE_TIMEOUT seconds (default 75,
aiohttp's), with a line naming its peer.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys

import uvloop

from applog import LineBuffer

from .env import ConfigError, env_int
from .http1 import Connections
from .server import build_handler, idle_close_log, refusal_log


def _raise_fd_limit() -> None:
    # Each in-flight request holds a socket: 10,000 of them need more than the usual
    # soft limit of 1024 descriptors. The hard limit is the ceiling we may take.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(
    connections: Connections,
    host: str | None,
    port: int,
    shutdown_timeout: int,
    lines: LineBuffer,
    hostname: str,
) -> int:
    """Serve until the first signal, then drain; the exit code."""
    loop = asyncio.get_running_loop()
    # backlog: 10,000 clients connecting at once overflow the default 128
    server = await loop.create_server(connections.factory, host, port, backlog=4096)
    lines.write(
        "listening",
        {"port": port, "hostname": hostname, "shutdown_timeout_s": shutdown_timeout},
        now=True,
    )
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            lines.write(
                "signal_ignored",
                {"signal": sig.name, "reason": "already draining; SIGKILL forces"},
                level="WARNING",
                now=True,
            )
            return
        lines.write(
            "shutdown_started", {"signal": sig.name, "timeout_s": shutdown_timeout}, now=True
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    server.close()  # new connections are refused from here on
    cut = await connections.drain(shutdown_timeout)
    lines.write("stopped", {"cut_at_shutdown_timeout": cut}, now=True)
    return 1 if cut else 0


def main() -> int:
    try:
        port = env_int("PORT", 8080, 1, 65535)
        shutdown_timeout = env_int("SHUTDOWN_TIMEOUT", 300, 0, 86_400)
        keepalive = env_int("KEEPALIVE_TIMEOUT", 75, 1, 86_400)
    except ConfigError as exc:
        print(f"backend: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("BIND_HOST") or None  # None: every interface
    hostname = os.environ.get("HOSTNAME") or socket.gethostname()
    # every line through one buffer: the per-request lines in batches, the rest at once
    # and in order with them
    lines = LineBuffer("backend")
    _raise_fd_limit()
    connections = Connections(
        build_handler(hostname, lines),
        keepalive_s=keepalive,
        on_refused=refusal_log(hostname, lines),
        on_idle_close=idle_close_log(hostname, lines),
    )
    # uvloop: the event loop in C (libuv), about 15% more requests per second than
    # asyncio's own loop here (benchmarks/RESULTS.md)
    return uvloop.run(serve(connections, host, port, shutdown_timeout, lines, hostname))


if __name__ == "__main__":
    sys.exit(main())
