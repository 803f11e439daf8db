"""logfmt logging shared by the hc and backend apps.

One line per event on stdout, `ts=<RFC 3339 UTC, ms> level=... msg=... key=value`, and
`parse_logfmt`, the reader of what it writes. The timestamp is wall-clock UTC with
milliseconds so that the lab's collectors can merge these lines with HAProxy's and
Envoy's on one clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shlex
import sys
import time
from datetime import UTC, datetime

from logfmter import Logfmter


class _Formatter(Logfmter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_ms(record.created)


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


# The hot path: the backend writes one line per request, and the logging module with
# Logfmter's general formatter was half of its CPU time (benchmarks/RESULTS.md). The
# same lines, built directly and written in batches.
_NEEDS_QUOTES = re.compile(r'[\x00-\x20="\'\\\x7f\ud800-\udfff]')
# control characters and lone surrogates (not UTF-8) are written as \uXXXX
_NEEDS_ESCAPES = re.compile(r'[\x00-\x1f"\\\x7f\ud800-\udfff]')
_CONTROL = {c: f"\\u{c:04x}" for c in [*range(0x20), 0x7F, *range(0xD800, 0xE000)]} | {
    ord("\n"): "\\n",
    ord("\t"): "\\t",
    ord("\r"): "\\r",
}


def logfmt_value(value: str | int) -> str:
    """A value as Logfmter writes it (quoted and escaped only when it must be), but for
    a backslash or a single quote: Logfmter leaves `a\\b` and `it's` bare, which
    `parse_logfmt` (a shell-like reader) takes as an escape or an open quote; here they
    are quoted, so that the reader gets the value back."""
    if isinstance(value, int):
        return str(value)
    if _NEEDS_QUOTES.search(value) is None:
        return value
    if _NEEDS_ESCAPES.search(value) is None:  # a path with a query, a reason with spaces
        return f'"{value}"'
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').translate(_CONTROL)
    return f'"{escaped}"'


def iso_ms(ts: float) -> str:
    """Wall-clock seconds as the lines' `ts`: RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class IsoMsClock:
    """`iso_ms`, with the date and time of day formatted once per second: at thousands
    of lines a second, datetime was a third of the backend's Python time per request
    (benchmarks/RESULTS.md). The same text as `iso_ms` (a property test compares)."""

    def __init__(self) -> None:
        self._second = 0
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        # datetime's own rounding: to the microsecond, half to even; then cut to ms
        frac, whole = math.modf(ts)
        second, us = int(whole), round(frac * 1_000_000)
        if us >= 1_000_000:
            second, us = second + 1, us - 1_000_000
        elif us < 0:
            second, us = second - 1, us + 1_000_000
        if second != self._second or not self._prefix:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._prefix}{us // 1000:03d}+00:00"


class LineBuffer:
    """logfmt lines of one app, as `get_logger` writes them, gathered and written to a
    file descriptor at most `flush_after_s` after the first of a batch (one write for
    many lines). Call `flush()` before other output and when stopping: a process killed
    with lines in the buffer loses at most that interval of them, as Envoy's access log
    does with its flush interval."""

    def __init__(self, app: str, fd: int = 1, flush_after_s: float = 0.1) -> None:
        self._app = app
        self._fd = fd
        self._flush_after_s = flush_after_s
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        #: `iso_ms` for this buffer's lines and for timestamps its writer logs
        self.iso_ms = IsoMsClock()

    def write(
        self, msg: str, fields: dict[str, str | int], level: str = "INFO", now: bool = False
    ) -> None:
        """Add a line; `now`: write the buffer at once (a rare event a reader waits for)."""
        parts = [
            f"ts={self.iso_ms(time.time())} level={level} app={self._app} msg={logfmt_value(msg)}"
        ]
        for key, value in fields.items():  # a loop, not a generator: the per-request path
            parts.append(f"{key}={value}" if type(value) is int else f"{key}={logfmt_value(value)}")
        self._lines.append(" ".join(parts))
        if now:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a tool): write at once
                self.flush()
                return
            self._timer = loop.call_later(self._flush_after_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        # logfmt_value escapes lone surrogates; the handler is the last guard: one bad
        # value must not lose the batch
        data = ("\n".join(self._lines) + "\n").encode(errors="backslashreplace")
        self._lines.clear()
        while data:
            data = data[os.write(self._fd, data) :]
