"""`python -m hc`: serve the health-check sidecar on HC_ADDR (default :18180)."""

from __future__ import annotations

import os
import sys

import uvloop
from aiohttp import web

from applog import get_logger

from .config import Config, ConfigError
from .fsm import FSM, Transition
from .server import allowed, build_app


def main() -> int:
    log = get_logger("hc")
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        print(f"hc: {exc}", file=sys.stderr)
        return 2

    def log_transition(t: Transition) -> None:
        log.info(
            "transition",
            extra={
                "from": str(t.from_state),
                "to": str(t.to_state),
                "reason": t.reason,
                "monotonic": f"{t.monotonic:.3f}",
            },
        )

    fsm = FSM(on_transition=log_transition)
    app = build_app(fsm, config, log)
    log.info(
        "listening",
        extra={"host": config.host or "*", "port": config.port, "admin_sources": allowed(config)},
    )
    # No graceful shutdown (seed 003 Q3): by the time kubelet sends SIGTERM the preStop
    # has finished and nothing in flight depends on hc.
    # uvloop: HAProxy's check timeout is what a slow answer turns into a false DOWN
    # (benchmarks/hc_probe_latency.py)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        shutdown_timeout=1.0,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
