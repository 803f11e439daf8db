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


def timing_summary(wall_s: float, labs: dict[str, tuple[float, list[float]]]) -> dict[str, Any]:
    """Where `make experiment`'s time went. `labs`: a lab's name -> (its playbook's
    elapsed seconds, each completed run's own duration). The wall time is set against
    the longest lab (side by side, the floor), the longest run and the sum of runs; what
    a lab spends outside its runs is its fixed cost (Ansible, HAProxy's convergence,
    each run's start and finalize), paid once per lab."""
    if not labs:
        return {"wall_s": round(wall_s, 1), "labs": 0}
    longest = max(labs, key=lambda name: labs[name][0])
    runs = [d for _, durations in labs.values() for d in durations]
    outside = {name: round(total - sum(ds), 1) for name, (total, ds) in labs.items()}
    return {
        "wall_s": round(wall_s, 1),
        "labs": len(labs),
        "longest_lab": {"name": longest, "s": round(labs[longest][0], 1)},
        "runs": len(runs),
        "longest_run_s": round(max(runs), 1) if runs else None,
        "sum_of_runs_s": round(sum(runs), 1),
        "outside_runs_s": outside,
    }


def timing_line(t: dict[str, Any]) -> str:
    """`timing_summary` in one line for the terminal."""
    if not t.get("labs"):
        return f"wall time: {t['wall_s']}s (no lab ran)"
    outside = list(t["outside_runs_s"].values())
    return (
        f"wall time: {t['wall_s']}s for {t['labs']} labs side by side; longest lab "
        f"{t['longest_lab']['s']}s ({t['longest_lab']['name']}); {t['runs']} runs, the "
        f"longest {t['longest_run_s']}s, together {t['sum_of_runs_s']}s; each lab's fixed "
        f"cost outside its runs (Ansible, HAProxy, starts) {min(outside)}-{max(outside)}s"
    )
