"""summary.json from the joined requests.jsonl and events.jsonl: what was cut, who was
exposed, each failure's cause and phase, and when things happened."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from ..model import registry
from ..model.plan import LoadShape
from .accounting import Phases, in_flight_at, phases_by_pod, victims
from .validity import validity


def scenario_classes(scenario: str) -> tuple[str, ...]:
    """The request classes the scenario drives (every class for an unknown one)."""
    known = registry.SCENARIOS.get(scenario)
    return known.classes if known else registry.REQUEST_CLASSES


def rates(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per class, the rate the plan offered and the rate the driver achieved over the
    load's span (first to last start): a shortfall means the tooling, not the gateway,
    shaped the run."""
    load = meta.get("load")
    offered = LoadShape(**load).offered_per_s() if load else {}
    starts = [r["start_ms"] for r in records]
    span_s = (max(starts) - min(starts)) / 1000 if len(starts) > 1 else 0.0
    out: dict[str, dict[str, Any]] = {}
    for cls, rate in offered.items():
        n = sum(1 for r in records if r["class"] == cls)
        achieved = round(n / span_s, 2) if span_s > 0 else None
        out[cls] = {
            "offered_per_s": rate,
            "achieved_per_s": achieved,
            "shortfall": achieved is not None and achieved < 0.9 * rate,
        }
    return out


def client_retry(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any] | None:
    """Per class, how many first attempts failed and how many of those failed again;
    the first attempts' causes. None when the run's client did not retry."""
    retry = (meta.get("load") or {}).get("client_retry", "none")
    if retry == "none":
        return None
    retried = [r for r in records if r.get("first_attempt")]
    return {
        "policy": retry,
        "first_attempts_failed": dict(Counter(r["class"] for r in retried)),
        "failed_after_retry": dict(Counter(r["class"] for r in retried if r.get("error"))),
        "first_attempt_causes": dict(
            Counter(r["first_attempt"].get("rule") or "unknown" for r in retried)
        ),
    }


def retry_words(retry: dict[str, Any] | None) -> str:
    """ "12 first attempts failed, 0 after one retry" (empty: no retry)."""
    if retry is None:
        return ""
    first = sum(retry["first_attempts_failed"].values())
    again = sum(retry["failed_after_retry"].values())
    return f"{first} first attempts failed, {again} after one retry"


def _first(events: list[dict[str, Any]], after_ms: float, **match: Any) -> dict[str, Any] | None:
    for e in sorted(events, key=lambda e: e["ts_ms"]):
        if e["ts_ms"] >= after_ms and all(
            (v(e.get(k)) if callable(v) else e.get(k) == v) for k, v in match.items()
        ):
            return e
    return None


def _offset_s(ts_ms: float | None, t_ms: float) -> float | None:
    return None if ts_ms is None else round((ts_ms - t_ms) / 1000, 3)


def zero_in_flight(events: list[dict[str, Any]], pod: str, t_ms: float) -> float | None:
    """When the victim's data plane (Envoy's gauge, as polled) last fell to zero after
    the termination and stayed there: from then on the termination could cut nothing."""
    gauge = sorted(
        (e["ts_ms"], int(e["value"]))
        for e in events
        if e.get("source") == "envoy"
        and e.get("kind") == "active_requests"
        and e.get("pod") == pod
        and e.get("value") is not None
    )
    last_busy = max((ts for ts, v in gauge if v > 0), default=t_ms)
    return next((ts for ts, v in gauge if v == 0 and ts >= max(last_busy, t_ms)), None)


def run_term(meta: dict[str, Any]) -> dict[str, Any]:
    """The termination as the accounting reads it, from the summary's inputs: when the
    event was issued, its first pod, the LB, and each pod it terminated (`terminations`:
    {pod, node, ms}; absent, the one pod at the event's time)."""
    return {
        "ms": meta["termination_ms"],
        "pod": meta["terminated_pod"],
        "node": meta["terminated_node"],
        "lb": meta.get("lb", ""),
        "pods": meta.get("terminations") or [],
    }


def per_pod(
    records: list[dict[str, Any]], by_pod: dict[str, Phases], term: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each terminated pod: its node, when its termination began and its phases (from
    the event's issue), how long it took to go, and the requests exposed to it and lost."""
    t = term["ms"]
    out = []
    for v in victims(term):
        ph = by_pod[v["pod"]]
        exposed_here = [r for r in records if r.get("exposed_to") == v["pod"]]
        out.append(
            {
                "pod": v["pod"],
                "node": v["node"],
                "at_s": _offset_s(v["ms"], t),
                "phases_s": {
                    k: _offset_s(x, t) for k, x in asdict(ph).items() if k != "termination"
                },
                "gone_after_s": _offset_s(ph.pod_gone, v["ms"]),
                "exposed": len(exposed_here),
                "lost": sum(1 for r in exposed_here if r["error"]),
            }
        )
    return out


def summarize(
    records: list[dict[str, Any]],
    events: list[dict[str, Any]],
    meta: dict[str, Any],
    by_pod: dict[str, Phases] | None = None,
) -> dict[str, Any]:
    """`by_pod`: each terminated pod's phases when the caller has them (the accounting
    did)."""
    t = meta["termination_ms"]
    term = run_term(meta)
    if by_pod is None:
        by_pod = phases_by_pod(events, term)
    starts = [v["ms"] for v in victims(term)]
    names = scenario_classes(meta["scenario"])
    protected_s = meta.get("protected_s")
    classes: dict[str, dict[str, Any]] = {}
    for cls in names:
        mine = [r for r in records if r["class"] == cls]
        errors = Counter(r["error"] for r in mine if r["error"])
        classes[cls] = {
            "total": len(mine),
            "ok": sum(1 for r in mine if not r["error"]),
            "failed": sum(errors.values()),
            "by_error": dict(sorted(errors.items())),
        }
        statuses = Counter(r["grpc_status"] for r in mine if r.get("grpc_status"))
        if statuses:
            # gRPC calls: how each ended, in gRPC's words (OK, UNAVAILABLE, INTERNAL ...)
            classes[cls]["by_grpc_status"] = dict(sorted(statuses.items()))
    # in flight as a pod's termination began: the first's, then each next one's
    in_flight = [r for r in records if any(in_flight_at(r, at) for at in starts)]
    in_flight_ids = {id(r) for r in in_flight}
    cut = [r for r in in_flight if r["error"]]
    pod = meta["terminated_pod"]
    pod_events = [e for e in events if e.get("pod") == pod]
    # kubelet's own view of the hook where it is seen (the local lab's kubelet logs it);
    # a real kubelet reports a preStop hook only when it fails, so on a cluster the
    # drain script's first and last steps bound it
    prestop_start = _first(pod_events, t, kind="prestop_started") or _first(
        pod_events, t, source="prestop", step="0", msg="start"
    )
    prestop_end = _first(pod_events, t, kind="prestop_finished") or _first(
        pod_events, t, source="prestop", step="7", msg="done"
    )
    ph = by_pod[pod]  # the victim's: the first the event terminated
    zero = zero_in_flight(events, pod, t)
    ok_ends = [r["end_ms"] for r in in_flight if r.get("end_ms") is not None]
    last_end = max(ok_ends) if ok_ends else None
    exposure = {}
    for cls in names:
        mine = [r for r in records if r["class"] == cls]
        hit = [r for r in mine if r.get("exposed")]
        lost = [r for r in hit if r["error"]]
        exposure[cls] = {
            "in_flight": sum(1 for r in mine if id(r) in in_flight_ids),
            "exposed": len(hit),
            "lost": len(lost),
            # longer than the mode's path can carry: the deadline's loss, not the order's
            "lost_beyond_protection": sum(
                1 for r in lost if protected_s is not None and r.get("planned_s", 0) > protected_s
            ),
            "where_unknown": sum(
                1 for r in mine if r.get("exposed") is None and id(r) in in_flight_ids
            ),
            # no exposed request: this run says nothing about the class
            "tested": bool(hit),
        }
    failed = [
        {
            "request_id": r.get("request_id"),
            "class": r["class"],
            "error": r["error"],
            "rule": r.get("rule"),
            "cause": r.get("cause"),
            "phase": r.get("phase"),
            "phase_of": r.get("phase_of"),
            "at_s": None if r.get("end_ms") is None else round((r["end_ms"] - t) / 1000, 3),
            "served_by": r.get("served_by"),
            "missing_hops": r.get("missing_hops", []),
            **({"grpc_status": r["grpc_status"]} if r.get("grpc_status") else {}),
        }
        for r in sorted(records, key=lambda r: r.get("end_ms") or r["start_ms"])
        if r["error"]
    ]
    known = registry.SCENARIOS.get(meta["scenario"])
    run_validity = validity(events, failed, term, known.lb_protocol if known else None)
    return {
        "mode": meta["mode"],
        "scenario": meta["scenario"],
        "event": meta.get("event", registry.DEFAULT_EVENT),
        "profile": meta["profile"],
        "terminated_pod": pod,
        "terminated_pods": [v["pod"] for v in victims(term)],
        # each terminated pod's own sequence (a rollout's: one after the other)
        "terminations": per_pod(records, by_pod, term),
        "long_request_s": meta.get("long_s"),
        "protected_s": meta.get("protected_s"),
        "exceeds_protection": meta.get("exceeds_protection"),
        "classes": classes,
        "in_flight_at_termination": len(in_flight),
        "in_flight_by_class": dict(Counter(r["class"] for r in in_flight)),
        "cut_in_flight": len(cut),
        "cut_in_flight_by_error": dict(Counter(r["error"] for r in cut)),
        "failed_total": sum(c["failed"] for c in classes.values()),
        "exposure": exposure,
        "lost_exposed": sum(c["lost"] for c in exposure.values()),
        "lost_beyond_protection": sum(c["lost_beyond_protection"] for c in exposure.values()),
        "rates": rates(records, meta),
        "failed": failed,
        "causes": dict(Counter(f["rule"] for f in failed if f["rule"])),
        # failures before the termination say the lab itself was unsteady (e.g. a false
        # DOWN from a starved health check): such a run is no clean test of the order
        "failed_before_termination": sum(
            1 for f in failed if f["at_s"] is not None and f["at_s"] < 0
        ),
        # whether the run measured the order at all (runbook.analysis.validity)
        "valid": run_validity.valid,
        "invalid_reasons": run_validity.reasons,
        "validity_notes": run_validity.notes,
        "servers_out": [
            {"server": o.server, "status": o.status, "at_s": _offset_s(o.ts_ms, t), "why": o.why}
            for o in run_validity.servers_out
        ],
        "missing_hops": dict(Counter(h for r in records for h in r.get("missing_hops", []))),
        # HAProxy's server named one node and a gateway on another served the request:
        # the LB's own node's NodePort (kube-proxy sends a node's own traffic anywhere)
        "served_off_lb_server": dict(Counter(off_server(r) for r in records if off_server(r))),
        # requests the client's HTTP stack sent again unasked (accounting.index_hops):
        # a first attempt failed where the record shows only the last
        "resent_by_client": dict(Counter(r["class"] for r in records if r.get("resent_by_client"))),
        # the client retry's work (registry.CLIENT_RETRIES once); None: it did not retry
        "client_retry": client_retry(records, meta),
        "timings_s": {
            "termination_to_lb_down": _offset_s(ph.lb_down, t),
            "termination_to_zero_in_flight": _offset_s(zero, t),
            "prestop": (
                None
                if prestop_start is None or prestop_end is None
                else round((prestop_end["ts_ms"] - prestop_start["ts_ms"]) / 1000, 3)
            ),
            "termination_to_pod_gone": _offset_s(ph.pod_gone, t),
            # the event's whole time: to its last terminated pod gone (None: one not seen)
            "event_to_last_pod_gone": (
                None
                if any(p.pod_gone is None for p in by_pod.values())
                else _offset_s(max(p.pod_gone for p in by_pod.values() if p.pod_gone), t)
            ),
            "last_in_flight_end": None if last_end is None else round((last_end - t) / 1000, 3),
            # how long the pod lived on after its last in-flight request ended
            "drain_overhead": (
                None
                if ph.pod_gone is None or last_end is None
                else round(max(0.0, ph.pod_gone - last_end) / 1000, 3)
            ),
        },
        # the termination sequence's boundaries, which each failure's phase refers to
        "phases_s": {k: _offset_s(v, t) for k, v in asdict(ph).items() if k != "termination"},
    }


def off_server(record: dict[str, Any]) -> str | None:
    """`worker1 -> worker2` when HAProxy sent it to worker1's NodePort and worker2's
    gateway served it; None otherwise."""
    served = record.get("served_by") or {}
    srv, node = served.get("lb_server"), served.get("node")
    if srv in (None, "<NOSRV>") or node is None or node == srv:
        return None
    return f"{srv} -> {node}"


def verdict(summary: dict[str, Any]) -> str:
    """One line: what the exposed requests say, which classes were not tested."""
    exposure = summary.get("exposure")
    failed = summary["failed_total"]
    if exposure is None:  # a summary from before exposure was counted
        cut = summary["cut_in_flight"]
        n = summary["in_flight_at_termination"]
        word = "cut none" if cut == 0 else f"cut {cut}"
        return f"{summary['mode']}: {word} of {n} in-flight requests; {failed} failed in all"
    slow = [c for c, r in summary.get("rates", {}).items() if r.get("shortfall")]
    warn = f"; WARNING achieved rate under offered for {', '.join(slow)}" if slow else ""
    if summary.get("valid") is False:
        warn += "; INVALID RUN: " + "; ".join(summary.get("invalid_reasons", []))
    elif before := summary.get("failed_before_termination", 0):
        warn += f"; NOT A CLEAN RUN: {before} failed before the termination"
    tested = {c: e for c, e in exposure.items() if e["tested"]}
    if not tested:
        return (
            f"{summary['mode']}: not tested: no request was on the terminating gateway "
            f"while it terminated; {failed} failed in all{warn}"
        )
    exposed = sum(e["exposed"] for e in tested.values())
    lost = sum(e["lost"] for e in tested.values())
    word = "lost none" if lost == 0 else f"lost {lost}"
    per = ", ".join(f"{c} {e['lost']}/{e['exposed']}" for c, e in tested.items())
    beyond = sum(e.get("lost_beyond_protection", 0) for e in tested.values())
    if beyond:
        per += (
            f"; {beyond} of them longer than the {summary.get('protected_s')}s this path protects"
        )
    untested = [c for c, e in exposure.items() if not e["tested"]]
    tail = f"; not tested: {', '.join(untested)}" if untested else ""
    if retried := retry_words(summary.get("client_retry")):
        tail += f"; client retry once: {retried}"
    return (
        f"{summary['mode']}: {word} of {exposed} exposed requests ({per}){tail}; "
        f"{failed} failed in all{warn}"
    )
