"""logfmt logging shared by the hc and backend apps.

One line per event on stdout, `ts=<RFC 3339 UTC, ms> level=... msg=... key=value`, and
`parse_logfmt`, the reader of what it writes. The timestamp is wall-clock UTC with
milliseconds so that the lab's collectors can merge these lines with HAProxy's and
Envoy's on one clock.
"""

from __future__ import annotations

import logging
import shlex
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


def parse_logfmt(line: str) -> dict[str, str]:
    """The key=value pairs of one logfmt line (quoted values unquoted); {} if unreadable."""
    try:
        return dict(tok.split("=", 1) for tok in shlex.split(line) if "=" in tok)
    except ValueError:
        return {}


def ts_ms(fields: dict[str, str]) -> float | None:
    """A parsed line's `ts` as ms since the epoch, or None."""
    ts = fields.get("ts")
    if not ts:
        return None
    try:
        return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000, 1)
    except ValueError:
        return None
