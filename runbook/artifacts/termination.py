"""The termination record: what was terminated, when, by which event, and which LB
the load went through; `pod` and `node` are the first (the victim), `pods` every one
when the event terminated more (a rollout). The runner that issues the termination
makes it; on the homelab it is `termination.json` in the run directory, which the
finalize step reads back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..model.registry import DEFAULT_EVENT
from .rundir import write_json

TERMINATION_FILE = "termination.json"


@dataclass(frozen=True, slots=True)
class Termination:
    ms: float  # when it was issued, on the run's clock
    pod: str
    node: str
    lb: str
    #: what terminated it (registry.EVENTS); a record without one was a deletion
    event: str = DEFAULT_EVENT
    #: every pod the event terminated, in order, each {pod, node, ms: when its
    #: termination began}; empty: `pod` alone, at `ms` (a rollout's are several)
    pods: list[dict[str, Any]] = field(default_factory=list)


def write_termination(run_dir: Path, term: Termination) -> None:
    write_json(run_dir / TERMINATION_FILE, asdict(term))


def read_termination(run_dir: Path) -> Termination | None:
    path = run_dir / TERMINATION_FILE
    return Termination(**json.loads(path.read_text())) if path.exists() else None
