"""The comparison across repeated runs: per scenario and mode, what was lost per class
and per cause over all runs, how much was exposed, the termination's timings, and in how
many runs the verdict held."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from ..model.registry import REQUEST_CLASSES

#: The timings the comparison puts side by side (medians over the runs).
TIMINGS = (
    "termination_to_lb_down",
    "termination_to_zero_in_flight",
    "termination_to_pod_gone",
)


def _classes(runs: list[dict[str, Any]]) -> list[str]:
    seen = {c for s in runs for c in s.get("exposure", {})}
    return [c for c in REQUEST_CLASSES if c in seen]


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def compare(summaries: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """mode -> its runs' summaries (one scenario), to the comparison document."""
    modes: dict[str, Any] = {}
    for mode, runs in summaries.items():
        classes = _classes(runs)
        exposed: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        beyond: Counter[str] = Counter()
        tested_runs: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        failed_all = 0
        held = 0
        unclean = 0
        for s in runs:
            exposure = s.get("exposure", {})
            for cls in classes:
                e = exposure.get(cls, {"exposed": 0, "lost": 0, "tested": False})
                exposed[cls] += e["exposed"]
                lost[cls] += e["lost"]
                beyond[cls] += e.get("lost_beyond_protection", 0)
                tested_runs[cls] += bool(e["tested"])
            causes.update(s.get("causes", {}))
            failed_all += s.get("failed_total", 0)
            held += s.get("lost_exposed", 0) == 0
            unclean += s.get("failed_before_termination", 0) > 0
        n = len(runs)
        total_lost = sum(lost.values())
        modes[mode] = {
            "runs": n,
            "exposed": {c: exposed[c] for c in classes},
            "lost_exposed": {c: lost[c] for c in classes},
            "lost_beyond_protection": {c: beyond[c] for c in classes},
            "tested_in_runs": {c: tested_runs[c] for c in classes},
            "failed_all": failed_all,
            "causes": dict(causes.most_common()),
            "median_timings_s": {
                k: _median([s.get("timings_s", {}).get(k) for s in runs]) for k in TIMINGS
            },
            "held_in": held,
            "unclean_runs": unclean,
            "verdict": verdict_line(n, held, total_lost, causes, sum(beyond.values()))
            + (
                f"; {unclean} run(s) not clean (failures before the termination)" if unclean else ""
            ),
        }
    return {"modes": modes}


def verdict_line(runs: int, held: int, lost: int, causes: Counter[str], beyond: int = 0) -> str:
    if runs == 0:
        return "no run completed"
    if lost == 0:
        return f"0 lost in {held} of {runs} runs"
    top = ", ".join(f"{k} x{v}" for k, v in causes.most_common(3))
    why = f" ({beyond} longer than the path protects)" if beyond else ""
    return f"{lost} exposed lost{why} over {runs} runs; no loss in {held} of {runs}; causes: {top}"
