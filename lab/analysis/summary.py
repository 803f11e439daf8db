"""summary.json from the joined requests.jsonl and events.jsonl: what was cut, who was
exposed, each failure's cause and phase, and when things happened."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from .accounting import Phases, in_flight_at, phases

CLASSES = ("sleep", "stream", "short")


def _first(events: list[dict[str, Any]], after_ms: float, **match: Any) -> dict[str, Any] | None:
    for e in sorted(events, key=lambda e: e["ts_ms"]):
        if e["ts_ms"] >= after_ms and all(
            (v(e.get(k)) if callable(v) else e.get(k) == v) for k, v in match.items()
        ):
            return e
    return None


def _offset_s(ts_ms: float | None, t_ms: float) -> float | None:
    return None if ts_ms is None else round((ts_ms - t_ms) / 1000, 3)


def summarize(
    records: list[dict[str, Any]],
    events: list[dict[str, Any]],
    meta: dict[str, Any],
    ph: Phases | None = None,
) -> dict[str, Any]:
    """`ph`: the termination's phases when the caller has them (the accounting did)."""
    t = meta["termination_ms"]
    classes: dict[str, dict[str, Any]] = {}
    for cls in CLASSES:
        mine = [r for r in records if r["class"] == cls]
        errors = Counter(r["error"] for r in mine if r["error"])
        classes[cls] = {
            "total": len(mine),
            "ok": sum(1 for r in mine if not r["error"]),
            "failed": sum(errors.values()),
            "by_error": dict(sorted(errors.items())),
        }
    in_flight = [r for r in records if in_flight_at(r, t)]
    cut = [r for r in in_flight if r["error"]]
    pod, node = meta["terminated_pod"], meta["terminated_node"]
    pod_events = [e for e in events if e.get("pod") == pod]
    prestop_start = _first(pod_events, t, kind="prestop_started")
    prestop_end = _first(pod_events, t, kind="prestop_finished")
    if ph is None:
        ph = phases(events, t, pod, node, meta.get("lb", ""))
    ok_ends = [r["end_ms"] for r in in_flight if r.get("end_ms") is not None]
    last_end = max(ok_ends) if ok_ends else None
    exposure = {}
    for cls in CLASSES:
        mine = [r for r in in_flight if r["class"] == cls]
        hit = [r for r in mine if r.get("exposed")]
        exposure[cls] = {
            "in_flight": len(mine),
            "exposed": len(hit),
            "lost": sum(1 for r in hit if r["error"]),
            "where_unknown": sum(1 for r in mine if r.get("exposed") is None),
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
            "at_s": None if r.get("end_ms") is None else round((r["end_ms"] - t) / 1000, 3),
            "served_by": r.get("served_by"),
            "missing_hops": r.get("missing_hops", []),
        }
        for r in sorted(records, key=lambda r: r.get("end_ms") or r["start_ms"])
        if r["error"]
    ]
    return {
        "mode": meta["mode"],
        "scenario": meta["scenario"],
        "profile": meta["profile"],
        "terminated_pod": pod,
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
        "failed": failed,
        "causes": dict(Counter(f["rule"] for f in failed if f["rule"])),
        "missing_hops": dict(Counter(h for r in records for h in r.get("missing_hops", []))),
        "timings_s": {
            "termination_to_lb_down": _offset_s(ph.lb_down, t),
            "prestop": (
                None
                if prestop_start is None or prestop_end is None
                else round((prestop_end["ts_ms"] - prestop_start["ts_ms"]) / 1000, 3)
            ),
            "termination_to_pod_gone": _offset_s(ph.pod_gone, t),
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


def verdict(summary: dict[str, Any]) -> str:
    """One line: what the exposed requests say, which classes were not tested."""
    exposure = summary.get("exposure")
    failed = summary["failed_total"]
    if exposure is None:  # a summary from before exposure was counted
        cut = summary["cut_in_flight"]
        n = summary["in_flight_at_termination"]
        word = "cut none" if cut == 0 else f"cut {cut}"
        return f"{summary['mode']}: {word} of {n} in-flight requests; {failed} failed in all"
    tested = {c: e for c, e in exposure.items() if e["tested"]}
    if not tested:
        return (
            f"{summary['mode']}: not tested: no request was in flight on the terminating "
            f"gateway; {failed} failed in all"
        )
    exposed = sum(e["exposed"] for e in tested.values())
    lost = sum(e["lost"] for e in tested.values())
    word = "lost none" if lost == 0 else f"lost {lost}"
    per = ", ".join(f"{c} {e['lost']}/{e['exposed']}" for c, e in tested.items())
    untested = [c for c, e in exposure.items() if not e["tested"]]
    tail = f"; not tested: {', '.join(untested)}" if untested else ""
    return (
        f"{summary['mode']}: {word} of {exposed} exposed in-flight requests ({per}){tail}; "
        f"{failed} failed in all"
    )
