"""Events: every collector's observations on one clock (wall time, ms).

Each collector writes its own `collected/<name>.jsonl` in the run directory, one JSON
object a line, flushed at once, so an interrupted run keeps what it saw. `merge`
joins them into `events.jsonl` in time order: the one file the analysis reads, on
both targets.

An event is `{"ts_ms", "source", "kind", ...fields}`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import IO, Any

from .writes import WriteFailures, write_lines_new

COLLECTED = "collected"


def now_ms() -> float:
    return round(time.time() * 1000, 1)


def event(source: str, kind: str, ts_ms: float | None = None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts_ms": now_ms() if ts_ms is None else ts_ms,
        "source": source,
        "kind": kind,
    }
    record.update(fields)
    return record


class EventLog:
    """One collector's JSON-lines file. A failed write goes to `failures` (the run
    stops, runbook.artifacts.writes) and the file takes no more lines."""

    def __init__(self, path: Path, failures: WriteFailures | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._failures = failures
        # "x": an artifact is never overwritten
        self._file: IO[str] = path.open("x", encoding="utf-8", buffering=1)
        # the homelab's log-stream threads share one file: one whole line at a time
        self._lock = threading.Lock()

    def emit(self, source: str, kind: str, ts_ms: float | None = None, **fields: Any) -> None:
        self.write(event(source, kind, ts_ms, **fields))

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.write(line)
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        # a cut last line is skipped by read_jsonl: what came before stays whole
        with contextlib.suppress(OSError):
            self._file.close()
        if self._failures is None:
            raise exc
        self._failures.report(self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.close()
            except OSError as exc:
                self._fail(exc)


class CollectedDir:
    """`collected/<name>.jsonl` sinks of one run, opened on first use, closed together."""

    def __init__(self, run_dir: Path, failures: WriteFailures | None = None) -> None:
        self.path = run_dir / COLLECTED
        #: where this run's writers report a failed write (None: they raise)
        self.failures = failures
        self._logs: dict[str, EventLog] = {}

    def log(self, name: str) -> EventLog:
        if name not in self._logs:
            self._logs[name] = EventLog(self.path / f"{name}.jsonl", self.failures)
        return self._logs[name]

    def close(self) -> None:
        for log in self._logs.values():
            log.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a cut last line is skipped)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def merge(run_dir: Path) -> int:
    """events.jsonl from every collected/*.jsonl, in time order; the number of events."""
    events = [
        e
        for path in sorted((run_dir / COLLECTED).glob("*.jsonl"))
        for e in read_jsonl(path)
        if isinstance(e.get("ts_ms"), int | float)
    ]
    events.sort(key=lambda e: e["ts_ms"])
    write_lines_new(run_dir / "events.jsonl", (json.dumps(e) + "\n" for e in events))
    return len(events)
