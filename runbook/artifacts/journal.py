"""journal.json: what a run did, step by step, and whether its hypothesis held.

Its own documented schema (`journal.schema.json` beside this file, JSON Schema
2020-12), not Chaos Toolkit's: the run is not driven by chaostoolkit-lib, so claiming
that schema would promise what no tool of Chaos Toolkit's was shown to read.
"""

from __future__ import annotations

import platform
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .events import now_ms
from .rundir import write_json

SCHEMA_ID = "igw-graceful-lab/journal/1"
SCHEMA_PATH = Path(__file__).with_name("journal.schema.json")
STATUSES = ("completed", "failed", "interrupted")


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class Journal:
    def __init__(self, mode: str, scenario: str, profile: str, target: str) -> None:
        self.mode, self.scenario, self.profile, self.target = mode, scenario, profile, target
        self.start_ms = now_ms()
        self.steps: list[dict[str, Any]] = []

    def step(
        self,
        name: str,
        start_ms: float,
        status: str = "succeeded",
        output: Any = None,
        end_ms: float | None = None,
    ) -> None:
        end = now_ms() if end_ms is None else end_ms
        self.steps.append(
            {
                "name": name,
                "status": status,
                "start": iso(start_ms),
                "end": iso(end),
                "duration_s": round((end - start_ms) / 1000, 3),
                "output": output,
            }
        )

    def replay(self, events: list[dict[str, Any]]) -> None:
        """The steps a runner in another process recorded as `experiment step` events
        (the homelab's): the journal starts at the first of them."""
        steps = [e for e in events if e.get("source") == "experiment" and e.get("kind") == "step"]
        for e in sorted(steps, key=lambda e: e["start_ms"]):
            self.step(
                e["name"], e["start_ms"], e.get("status", "succeeded"), e.get("output"), e["ts_ms"]
            )
        if steps:
            self.start_ms = min(self.start_ms, *(e["start_ms"] for e in steps))

    def document(
        self, status: str, summary: dict[str, Any] | None, termination_ms: float | None
    ) -> dict[str, Any]:
        if status not in STATUSES:
            raise ValueError(f"journal status {status!r} is not one of: {', '.join(STATUSES)}")
        end = now_ms()
        cut = None if summary is None else summary["cut_in_flight"]
        return {
            "schema": SCHEMA_ID,
            "title": f"Terminate a gateway pod under load ({self.mode})",
            "mode": self.mode,
            "scenario": self.scenario,
            "profile": self.profile,
            "target": self.target,
            "platform": platform.platform(),
            "node": socket.gethostname(),
            "start": iso(self.start_ms),
            "end": iso(end),
            "duration_s": round((end - self.start_ms) / 1000, 3),
            "status": status,
            "termination_ms": termination_ms,
            "hypothesis": {
                "title": "No request in flight at the termination is cut",
                # None: the run ended before there was anything to judge
                "met": None if cut is None else cut == 0,
                "cut_in_flight": cut,
            },
            "steps": self.steps,
        }

    def write(
        self, path: Path, status: str, summary: dict[str, Any] | None, termination_ms: float | None
    ) -> None:
        write_json(path, self.document(status, summary, termination_ms))
