"""The comparison across repeated runs: per mode, what was lost per class and per cause
over all runs, how much was exposed, and in how many runs the verdict held."""

from __future__ import annotations

from collections import Counter
from typing import Any

CLASSES = ("sleep", "stream", "short")


def compare(summaries: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """mode -> its runs' summaries, to the comparison document."""
    modes: dict[str, Any] = {}
    for mode, runs in summaries.items():
        exposed: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        tested_runs: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        failed_all = 0
        held = 0
        for s in runs:
            exposure = s.get("exposure", {})
            for cls in CLASSES:
                e = exposure.get(cls, {"exposed": 0, "lost": 0, "tested": False})
                exposed[cls] += e["exposed"]
                lost[cls] += e["lost"]
                tested_runs[cls] += bool(e["tested"])
            causes.update(s.get("causes", {}))
            failed_all += s.get("failed_total", 0)
            held += s.get("lost_exposed", 0) == 0
        n = len(runs)
        total_lost = sum(lost.values())
        modes[mode] = {
            "runs": n,
            "exposed": {c: exposed[c] for c in CLASSES},
            "lost_exposed": {c: lost[c] for c in CLASSES},
            "tested_in_runs": {c: tested_runs[c] for c in CLASSES},
            "failed_all": failed_all,
            "causes": dict(causes.most_common()),
            "held_in": held,
            "verdict": verdict_line(n, held, total_lost, causes),
        }
    return {"modes": modes}


def verdict_line(runs: int, held: int, lost: int, causes: Counter[str]) -> str:
    if runs == 0:
        return "no run completed"
    if lost == 0:
        return f"0 lost in {held} of {runs} runs"
    top = ", ".join(f"{k} x{v}" for k, v in causes.most_common(3))
    return f"{lost} exposed lost over {runs} runs; no loss in {held} of {runs}; causes: {top}"
