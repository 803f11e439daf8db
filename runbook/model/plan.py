"""The run plan: what one experiment drives and why, from the mode, the scenario and
the timing budget. Both runners (local lab, homelab) and the analysis read it from
`plan.json` in the run directory.

The budget is derived once, by the timing role in `run-experiment.yml` (the same
derivation that rendered the manifests and HAProxy's config), and handed to the
runner as `--budget`: the plan describes what was deployed, timing overrides
included. A runner started without it derives the budget from `--profile` and
`--overrides`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import registry, timing

#: busy's pooled class: the rate (Envoy Gateway's e2e drives its rollouts at a few
#: thousand a second; a thousand holds on two cores with both labs' hops) and the pool
#: (fortio's 50 connections there).
BUSY_RATE_PER_S = 1000.0
BUSY_POOL = 50
#: h2's h2_short class: twice the short classes' rate, so its starts fall on theirs
#: and the long classes' groups still fall between two starts (driver.long_starts)
H2_RATE_PER_S = 16.0


@dataclass(frozen=True, slots=True)
class LoadShape:
    """What the load driver sends, in seconds. The termination comes `warmup_s + lead_s`
    after the load starts; the load stops `tail_s` after the pod is gone.

    inflight (the seed's S1): `sleep_count` /sleep and `stream_count` /stream requests
    of `long_s` start together `lead_s` before the termination, short requests over
    fresh connections at `short_rate_per_s` throughout.
    steady: every class keeps starting until the load stops: short requests over fresh
    connections and over a keep-alive pool of `pool_size` (`pooled_rate_per_s`), and
    /sleep, /stream and WebSocket sessions of `long_s` at `long_rate_per_s` each, started
    `long_together` back to back.
    busy: steady's, with the pooled class at `pooled_rate_per_s` in the thousand a
    second, driven by `pooled_tool` (registry.LOAD_TOOLS) over `pool_size` connections.
    h2: steady's, h2_short at `h2_rate_per_s` over one HTTP/2 connection, and
    grpc_stream calls like /stream's (its messages, its interval) at `long_rate_per_s`.
    """

    long_s: int
    scenario: str = "inflight"
    # inflight: enough that each class has some on the terminating gateway (HAProxy's
    # round robin spreads requests started back to back over both gateways)
    sleep_count: int = 6
    stream_count: int = 4
    stream_interval_ms: int = 500
    short_rate_per_s: float = 20.0
    pooled_rate_per_s: float = 0.0
    pool_size: int = 4
    pooled_tool: str = "aiohttp"
    #: h2_short: short requests over one HTTP/2 connection to the LB, at this rate
    h2_rate_per_s: float = 0.0
    #: registry.CLIENT_RETRIES: what the driver's own classes do with a failed request
    client_retry: str = "none"
    long_rate_per_s: float = 0.0
    # steady: HAProxy's round robin sends requests started back to back to different
    # gateways, so a pair of each long class at a time keeps every class on the
    # terminating gateway; one at a time, the other classes' requests between them can
    # put every one in flight on the survivor (the class then "not tested")
    long_together: int = 1
    ws_interval_ms: int = 500
    warmup_s: float = 3.0
    lead_s: float = 2.0
    tail_s: float = 3.0

    @property
    def stream_chunks(self) -> int:
        return max(1, int(self.long_s * 1000 / self.stream_interval_ms))

    @property
    def long_timeout_s(self) -> float:
        """How long a client waits for a long request before giving up: its planned
        length and a minute to spare."""
        return self.long_s + 60

    @property
    def ws_messages(self) -> int:
        return max(1, int(self.long_s * 1000 / self.ws_interval_ms))

    def offered_per_s(self) -> dict[str, float]:
        """The rate each class is offered at (inflight's long requests are one burst)."""
        known = registry.scenario(self.scenario)
        if known.continuous:
            return {
                "short": self.short_rate_per_s,
                "short_pooled": self.pooled_rate_per_s,
                **({"h2_short": self.h2_rate_per_s} if self.h2_rate_per_s else {}),
                **{c: self.long_rate_per_s for c in registry.LONG_CLASSES if c in known.classes},
            }
        return {"short": self.short_rate_per_s}

    def request(self, cls: str) -> tuple[str, int | None]:
        """The path a request of the class asks for, and the chunks (stream lines,
        WebSocket echoes) it must bring back whole."""
        return {
            "short": ("/", None),
            "short_pooled": ("/", None),
            "h2_short": ("/", None),
            "sleep": (f"/sleep?seconds={self.long_s}", None),
            "stream": (
                f"/stream?chunks={self.stream_chunks}&interval_ms={self.stream_interval_ms}",
                self.stream_chunks,
            ),
            "ws": ("/ws", self.ws_messages),
            # the method; the messages and their interval go in the call (stream's)
            "grpc_stream": (registry.GRPC_TICKS_METHOD, self.stream_chunks),
        }[cls]

    def planned_s(self, cls: str) -> float:
        """How long a request of the class lasts when nothing goes wrong."""
        stream_s = (self.stream_chunks - 1) * self.stream_interval_ms / 1000
        return {
            "sleep": float(self.long_s),
            "stream": stream_s,
            "grpc_stream": stream_s,  # stream's messages at stream's interval
            "ws": self.ws_messages * self.ws_interval_ms / 1000,
        }.get(cls, 0.0)


@dataclass(frozen=True, slots=True)
class RunPlan:
    mode: str
    scenario: str
    profile: str
    load: LoadShape
    protected_s: float
    notes: list[str]
    budget: dict[str, Any] = field(repr=False)
    #: what terminates the gateway pod (registry.EVENTS)
    event: str = registry.DEFAULT_EVENT

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
            load=LoadShape(**d["load"]),
            protected_s=d["protected_s"],
            notes=list(d["notes"]),
            budget=dict(d["budget"]),
            event=d.get("event", registry.DEFAULT_EVENT),
        )


def add_arguments(parser: argparse.ArgumentParser, profile: str) -> None:
    """--mode, --scenario, --profile and --event, their choices from the registry: argparse
    refuses anything else, naming the value and the valid ones, before anything runs."""
    parser.add_argument("--mode", required=True, choices=list(registry.MODES))
    parser.add_argument("--scenario", default="inflight", choices=list(registry.SCENARIOS))
    parser.add_argument("--profile", default=profile, choices=list(timing.PROFILES))
    parser.add_argument(
        "--event",
        default=registry.DEFAULT_EVENT,
        choices=list(registry.EVENTS),
        help="what terminates the gateway pod mid-load (registry.EVENTS)",
    )
    parser.add_argument(
        "--client-retry",
        default="none",
        choices=list(registry.CLIENT_RETRIES),
        help="once: the client sends a request that failed before any response (or got "
        "502, 503, 504) once more, as many clients do; the record keeps both outcomes",
    )


def check_inputs(mode: str, scenario: str, profile: str, client_retry: str = "none") -> None:
    """Refuse a bad mode, scenario, profile or client retry (registry.UnknownName), or a
    retry the scenario's tools cannot make, before anything changes."""
    registry.require("mode", mode, list(registry.MODES))
    registry.require("scenario", scenario, list(registry.SCENARIOS))
    registry.require("profile", profile, list(timing.PROFILES))
    registry.require("client retry", client_retry, list(registry.CLIENT_RETRIES))
    if client_retry != "none" and registry.scenario(scenario).pooled_tool != "aiohttp":
        raise registry.UnknownName(
            f"client retry {client_retry!r} is the load driver's own: scenario {scenario!r} "
            f"drives short_pooled with {registry.scenario(scenario).pooled_tool}, which "
            "retries nothing of its own accord (only Go's re-send, counted apart)"
        )


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """--budget (the timing role's derivation, handed down) or --overrides."""
    parser.add_argument(
        "--budget",
        help="the timing budget as JSON, as the timing role derived it (timing.report): "
        "the plan is sized from what was deployed",
    )
    parser.add_argument("--overrides", help="timing overrides as JSON (without --budget)")


def plan_for(args: argparse.Namespace) -> RunPlan:
    """The plan for a runner's arguments (add_arguments, add_budget_arguments): from the
    handed-down budget when there is one, whose profile must be --profile's."""
    if args.budget:
        if args.overrides:
            raise ValueError("--budget already carries the overrides: pass one of the two")
        budget = json.loads(args.budget)
        if budget.get("profile") != args.profile:
            raise ValueError(
                f"--budget is profile {budget.get('profile')!r}, --profile is {args.profile!r}"
            )
        made = plan_from_budget(budget, args.mode, args.scenario, args.client_retry)
    else:
        overrides = json.loads(args.overrides) if args.overrides else None
        made = plan(args.profile, args.mode, args.scenario, overrides, args.client_retry)
    return for_event(made, args.event)


def for_event(run_plan: RunPlan, event: str) -> RunPlan:
    """The plan under `event` (registry.EVENTS), which the notes name when it is not
    the seed's deletion."""
    known = registry.event(event)
    if known.name == registry.DEFAULT_EVENT:
        return run_plan
    return dataclasses.replace(
        run_plan,
        event=known.name,
        notes=[*run_plan.notes, f"The event is {known.name}: {known.summary}."],
    )


def plan(
    profile: str,
    mode: str,
    scenario: str = "inflight",
    overrides: Mapping[str, Any] | None = None,
    client_retry: str = "none",
) -> RunPlan:
    """Size the long requests from what the best gateway path protects (timing model)."""
    check_inputs(mode, scenario, profile, client_retry)
    return plan_from_budget(timing.report(profile, overrides), mode, scenario, client_retry)


def plan_from_budget(
    budget: Mapping[str, Any], mode: str, scenario: str = "inflight", client_retry: str = "none"
) -> RunPlan:
    """The plan from a derived budget (timing.report's shape: profile, numbers,
    protected)."""
    profile = str(budget["profile"])
    check_inputs(mode, scenario, profile, client_retry)
    protected = budget["protected"]
    mine = float(protected[registry.mode(mode).protected_path]["longest_s"])
    known = registry.scenario(scenario)
    if known.continuous:
        # A long request may start on the gateway until the LB stops sending; in the
        # ordered path that is just before NOLB, so half its window leaves room.
        window = float(protected["gateway_ordered"]["longest_s"])
        long_s = max(1, int(window / 2))
        busy = known.pooled_tool == "vegeta"
        load = LoadShape(
            long_s=long_s,
            scenario=scenario,
            short_rate_per_s=8.0,
            pooled_rate_per_s=BUSY_RATE_PER_S if busy else 8.0,
            pool_size=BUSY_POOL if busy else 4,
            pooled_tool=known.pooled_tool,
            h2_rate_per_s=H2_RATE_PER_S if "h2_short" in known.classes else 0.0,
            long_rate_per_s=1.0,
            long_together=2,
            ws_interval_ms=250,
            stream_interval_ms=250,
        )
        notes = [
            f"Every class keeps starting through the termination; long requests last "
            f"{long_s}s, half the {window:g}s the ordered path protects for a request "
            "that starts just before the LB stops sending.",
        ]
        if load.h2_rate_per_s:
            notes.append(
                f"Short requests over one HTTP/2 connection to HAProxy at {H2_RATE_PER_S:g}/s "
                f"(h2_short); HAProxy speaks {known.lb_protocol} to the gateways."
            )
        if "grpc_stream" in known.classes:
            notes.append(
                "Server-streaming gRPC calls (grpc_stream) on one channel, each asking for "
                "/stream's messages at its interval."
            )
        if busy:
            notes.append(
                f"Short requests over {BUSY_POOL} keep-alive connections at "
                f"{BUSY_RATE_PER_S:g}/s ({known.pooled_tool}): at that rate a loss of one "
                "request in ten thousand is seen."
            )
    else:
        best = float(protected["gateway_improved"]["longest_s"])
        long_s = max(1, int(best) - 2)  # ends inside the improved path's window, 2 s to spare
        load = LoadShape(long_s=long_s)
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
    if client_retry != "none":
        load = dataclasses.replace(load, client_retry=client_retry)
        notes.append(
            "The client retries once what failed before any response or got "
            f"{', '.join(map(str, registry.RETRIED_STATUSES))}, as many clients do; each "
            "record keeps its first attempt's outcome beside the final one."
        )
    return RunPlan(mode, scenario, profile, load, mine, notes, dict(budget["numbers"]))
