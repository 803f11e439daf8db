"""events.jsonl: every collector's observations on one clock (wall time, ms).

Each line is written and flushed at once, so an interrupted run keeps what it saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


def now_ms() -> float:
    return round(time.time() * 1000, 1)


class EventLog:
    def __init__(self, path: Path) -> None:
        # "x": an artifact is never overwritten
        self._file: IO[str] = path.open("x", encoding="utf-8", buffering=1)

    def emit(self, source: str, kind: str, ts_ms: float | None = None, **fields: Any) -> None:
        record = {"ts_ms": now_ms() if ts_ms is None else ts_ms, "source": source, "kind": kind}
        record.update(fields)
        self._file.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a cut last line is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
