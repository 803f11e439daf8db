"""The run plan: what one experiment drives and why, from the mode, the scenario and
the timing budget. Both runners (local lab, homelab) and the analysis read it from
`plan.json` in the run directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import registry, timing


@dataclass(frozen=True, slots=True)
class InflightScenario:
    """The `inflight` scenario. Durations in seconds; the long requests start `lead_s`
    before the termination and last `long_s`, sized from the timing model."""

    long_s: int
    # Enough long requests that each class has some on the terminating gateway: they
    # start back to back, so HAProxy's round robin spreads them over both gateways.
    # More of the same class changes nothing in what one request goes through.
    sleep_count: int = 6
    stream_count: int = 4
    stream_interval_ms: int = 500
    short_rate_per_s: float = 20.0
    warmup_s: float = 3.0
    lead_s: float = 2.0
    tail_s: float = 3.0

    @property
    def stream_chunks(self) -> int:
        return max(1, int(self.long_s * 1000 / self.stream_interval_ms))


@dataclass(frozen=True, slots=True)
class RunPlan:
    mode: str
    scenario: str
    profile: str
    load: InflightScenario
    protected_s: float
    notes: list[str]
    budget: dict[str, Any] = field(repr=False)

    @property
    def exceeds_protection(self) -> bool:
        return self.load.long_s > self.protected_s

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["long_s"] = self.load.long_s
        d["exceeds_protection"] = self.exceeds_protection
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunPlan:
        return cls(
            mode=d["mode"],
            scenario=d["scenario"],
            profile=d["profile"],
            load=InflightScenario(**d["load"]),
            protected_s=d["protected_s"],
            notes=list(d["notes"]),
            budget=dict(d["budget"]),
        )


def add_arguments(parser: argparse.ArgumentParser, profile: str) -> None:
    """--mode, --scenario and --profile, their choices from the registry: argparse
    refuses anything else, naming the value and the valid ones, before anything runs."""
    parser.add_argument("--mode", required=True, choices=list(registry.MODES))
    parser.add_argument("--scenario", default="inflight", choices=list(registry.SCENARIOS))
    parser.add_argument("--profile", default=profile, choices=list(timing.PROFILES))


def check_inputs(mode: str, scenario: str, profile: str) -> None:
    """Refuse a bad mode, scenario or profile (registry.UnknownName) before anything changes."""
    registry.require("mode", mode, list(registry.MODES))
    registry.require("scenario", scenario, list(registry.SCENARIOS))
    registry.require("profile", profile, list(timing.PROFILES))


def plan(
    profile: str, mode: str, scenario: str = "inflight", overrides: Mapping[str, Any] | None = None
) -> RunPlan:
    """Size the long requests from what the best gateway path protects (timing model)."""
    check_inputs(mode, scenario, profile)
    budget = timing.derive(profile, overrides)
    protected = timing.protected_by_path(budget)
    best = float(protected["gateway_improved"]["longest_s"])
    mine = float(protected[registry.mode(mode).protected_path]["longest_s"])
    long_s = max(1, int(best) - 2)  # ends inside the improved path's window, 2 s to spare
    load = InflightScenario(long_s=long_s)
    notes = [
        f"Long requests last {long_s}s and start {load.lead_s:g}s before the termination: "
        f"inside the {best:g}s a gateway termination can protect at best (improved: "
        "DRAIN_TIMEOUT; pilot-agent kills Envoy at terminationDrainDuration).",
    ]
    if long_s > mine:
        notes.append(
            f"The {mode} path protects {mine:g}s: these requests are longer than it can carry "
            "by design, to show what it cuts."
        )
    return RunPlan(mode, scenario, profile, load, mine, notes, budget.as_dict())
