"""logfmt logging shared by the hc and backend apps.

One line per event on stdout, `ts=<RFC 3339 UTC, ms> level=... msg=... key=value`.
The timestamp is wall-clock UTC with milliseconds so that the lab's collectors can
merge these lines with HAProxy's and Envoy's on one clock.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from logfmter import Logfmter


class _Formatter(Logfmter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def get_logger(name: str, level: int = logging.INFO) -> logging.Logger:
    """A logger writing logfmt lines to stdout; idempotent per name."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            _Formatter(
                keys=["ts", "level", "app"],
                mapping={"ts": "asctime", "level": "levelname", "app": "name"},
            )
        )
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger
