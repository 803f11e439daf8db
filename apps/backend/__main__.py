"""`python -m backend`: serve on PORT (default 8080) until SIGTERM/SIGINT.

On SIGTERM the listening socket closes at once (new connections are refused) and
in-flight requests get SHUTDOWN_TIMEOUT seconds (default 300, the seed's
srv.Shutdown(ctx 300s)) to finish.

aiohttp's numbers (aiohttp 3.14, measured: tests/test_backend.py): a handler still
running at shutdown is waited for `shutdown_timeout`, then aiohttp asks it to stop
and waits `shutdown_timeout` again before the handler task is really cancelled, so
a sleeping handler runs for 2 x shutdown_timeout. We pass SHUTDOWN_TIMEOUT / 2 so
that an in-flight request gets SHUTDOWN_TIMEOUT, as the seed's Go server did.
"""

from __future__ import annotations

import os
import resource
import socket
import sys

from aiohttp import web

from applog import get_logger

from .server import build_app


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


def main() -> int:
    try:
        port = _env_int("PORT", 8080, 1, 65535)
        shutdown_timeout = _env_int("SHUTDOWN_TIMEOUT", 300, 0, 86_400)
    except ConfigError as exc:
        print(f"backend: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("BIND_HOST") or None  # None: every interface
    hostname = os.environ.get("HOSTNAME") or socket.gethostname()
    log = get_logger("backend")
    _raise_fd_limit()
    app = build_app(hostname, log)
    log.info(
        "listening",
        extra={"port": port, "hostname": hostname, "shutdown_timeout_s": shutdown_timeout},
    )
    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=shutdown_timeout / 2,  # aiohttp waits it twice: see above
        # Without it aiohttp (>= 3.7) lets a handler run on after its client left:
        # the seed's handler returns on r.Context().Done(), and so do ours.
        handler_cancellation=True,
        backlog=4096,  # 10,000 clients connecting at once overflow the default 128
        print=None,
        access_log=None,
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
