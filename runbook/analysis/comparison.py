"""The comparison across repeated runs: per scenario and mode, over its valid runs,
what was lost per class and per cause, how much was exposed, every failure, how sure
the verdict is (runbook.analysis.bounds), the termination's timings, and in how many runs
nothing failed; the invalid runs beside, with their reasons."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..model.registry import REQUEST_CLASSES
from .bounds import loss_bounds, percent, upper_bound_none_lost, wilson_interval

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


def compare(
    summaries: dict[str, list[dict[str, Any]]], valid_runs_asked: int | None = None
) -> dict[str, Any]:
    """mode -> its runs' summaries (one scenario), to the comparison document. Only the
    valid runs (runbook.analysis.validity) are counted; the invalid ones are listed with
    their reasons. With `valid_runs_asked`, a verdict over fewer says it is incomplete."""
    modes: dict[str, Any] = {}
    for mode, all_runs in summaries.items():
        runs = [s for s in all_runs if s.get("valid", True)]
        invalid = [
            {"run": s.get("run_dir"), "reasons": s.get("invalid_reasons", [])}
            for s in all_runs
            if not s.get("valid", True)
        ]
        classes = _classes(runs)
        exposed: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        beyond: Counter[str] = Counter()
        tested_runs: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        failed_all = 0
        held = 0
        first_failed = again = 0
        retried = False
        for s in runs:
            if retry := s.get("client_retry"):
                retried = True
                first_failed += sum(retry["first_attempts_failed"].values())
                again += sum(retry["failed_after_retry"].values())
            exposure = s.get("exposure", {})
            for cls in classes:
                e = exposure.get(cls, {"exposed": 0, "lost": 0, "tested": False})
                exposed[cls] += e["exposed"]
                lost[cls] += e["lost"]
                beyond[cls] += e.get("lost_beyond_protection", 0)
                tested_runs[cls] += bool(e["tested"])
            causes.update(s.get("causes", {}))
            failed_all += s.get("failed_total", 0)
            # a run holds when no request failed at all, exposed or not
            held += s.get("failed_total", 0) == 0
        n = len(runs)
        total_exposed, total_lost = sum(exposed.values()), sum(lost.values())
        bounds = loss_bounds(total_lost, total_exposed)
        modes[mode] = {
            "runs": len(all_runs),
            "valid_runs": n,
            "invalid_runs": invalid,
            "exposed": {c: exposed[c] for c in classes},
            "lost_exposed": {c: lost[c] for c in classes},
            "lost_beyond_protection": {c: beyond[c] for c in classes},
            "tested_in_runs": {c: tested_runs[c] for c in classes},
            "exposed_total": total_exposed,
            "lost_total": total_lost,
            "failed_all": failed_all,
            **bounds,
            "causes": dict(causes.most_common()),
            "median_timings_s": {
                k: _median([s.get("timings_s", {}).get(k) for s in runs]) for k in TIMINGS
            },
            "held_in": held,
            "verdict": verdict_line(
                Tally(n, len(all_runs), held, total_exposed, total_lost, failed_all),
                causes,
                sum(beyond.values()),
            )
            + (
                f"; client retry once: {first_failed} first attempts failed, "
                f"{again} after one retry"
                if retried
                else ""
            )
            + (
                f"; INCOMPLETE: {n} valid runs of the {valid_runs_asked} asked"
                if valid_runs_asked is not None and n < valid_runs_asked
                else ""
            ),
            "complete": valid_runs_asked is None or n >= valid_runs_asked,
            # summed over the valid runs; None: their client did not retry
            "client_retry": (
                {"first_attempts_failed": first_failed, "failed_after_retry": again}
                if retried
                else None
            ),
        }
    return {"modes": modes}


@dataclass(frozen=True)
class Tally:
    """What a verdict counts, over one mode's runs in one scenario."""

    valid_runs: int
    runs: int
    #: valid runs in which no request failed
    held: int
    exposed: int
    lost: int
    #: every failed request of the valid runs, exposed or not
    failed_all: int


def verdict_line(t: Tally, causes: Counter[str], beyond: int = 0) -> str:
    """One line a person reads: lost of exposed, every failure, over how many valid runs
    of how many, and how sure."""
    if t.runs == 0:
        return "no run completed"
    over = f"over {t.valid_runs} valid runs of {t.runs}"
    if t.valid_runs == 0:
        return f"no valid run: {t.runs} run(s), all invalid (see invalid_runs)"
    failed = f"{t.failed_all} failed in all"
    if t.lost == 0:
        upper = upper_bound_none_lost(t.exposed)
        sure = f"; loss rate below {percent(upper)} at 95%" if upper is not None else ""
        head = "0 lost" if t.failed_all == 0 else f"0 exposed lost, {failed}"
        return (
            f"{head}: 0 of {t.exposed} exposed requests {over}{sure}; "
            f"no failure in {t.held} of {t.valid_runs}"
        )
    top = ", ".join(f"{k} x{v}" for k, v in causes.most_common(3))
    why = f" ({beyond} longer than the path protects)" if beyond else ""
    interval = wilson_interval(t.lost, t.exposed)
    sure = (
        f"; loss rate {percent(t.lost / t.exposed)} ({percent(interval[0])}-"
        f"{percent(interval[1])} at 95%)"
        if interval is not None
        else ""
    )
    return (
        f"{t.lost} of {t.exposed} exposed lost{why}, {failed}, {over}{sure}; "
        f"no failure in {t.held} of {t.valid_runs}; causes: {top}"
    )


def timing_summary(wall_s: float, labs: dict[str, tuple[float, list[float]]]) -> dict[str, Any]:
    """Where `make experiment`'s time went. `labs`: a lab's name -> (its playbook's
    elapsed seconds, each completed run's own duration). The wall time is set against
    the longest lab (the floor when all run at once), the longest run and the sum of runs; what
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


def timing_line(t: dict[str, Any], cluster: str | None = None) -> str:
    """`timing_summary` in one line for the terminal. On a `cluster` the "labs" are its
    modes, run one after the other, each mode's runs in one Ansible playbook."""
    if not t.get("labs"):
        return f"wall time: {t['wall_s']}s (no lab ran)"
    outside = list(t["outside_runs_s"].values())
    if cluster is None:
        labs, longest = f"{t['labs']} labs", "longest lab"
        cost = "each lab's fixed cost outside its runs (Ansible, HAProxy, starts)"
    else:
        labs, longest = f"{t['labs']} modes one after the other on {cluster}", "the longest"
        cost = (
            "each mode's cost outside its runs (site.yml, its flip, and each run's "
            "placement, collectors, fetch and finalize)"
        )
    return (
        f"wall time: {t['wall_s']}s for {labs}; {longest} {t['longest_lab']['s']}s "
        f"({t['longest_lab']['name']}); {t['runs']} runs, the longest {t['longest_run_s']}s, "
        f"together {t['sum_of_runs_s']}s; {cost} {min(outside)}-{max(outside)}s"
    )


#: A verdict's kind, each with the colour the comparison page gives it: what a person
#: reads at a glance. `held`: no request failed; `unexposed`: none of the exposed was
#: lost but some request failed; `lost`: exposed requests were lost; `incomplete`:
#: fewer valid runs than asked (whatever they say); `none`: no valid run.
VERDICT_KINDS = {
    "held": "#2e7d32",
    "unexposed": "#f9a825",
    "lost": "#c62828",
    "incomplete": "#757575",
    "none": "#9e9e9e",
}


@dataclass(frozen=True)
class Cell:
    """One mode in one scenario, as the verdict matrix shows it."""

    kind: str
    #: the headline: `0 / 320 lost`
    head: str
    #: how many valid runs, how sure, every failure
    detail: str

    @property
    def colour(self) -> str:
        return VERDICT_KINDS[self.kind]


def verdict_cell(m: dict[str, Any]) -> Cell:
    """A mode's comparison entry (compare()["modes"][mode]) to its matrix cell."""
    n, runs = m["valid_runs"], m["runs"]
    if n == 0:
        return Cell("none", "no valid run", f"{runs} run(s), all invalid")
    over = f"{n} valid of {runs} runs"
    failed = m["failed_all"]
    if m["lost_total"] == 0:
        upper = m.get("loss_rate_upper_95")
        sure = f"; below {percent(upper)} at 95%" if upper is not None else "; nothing exposed"
        kind = "held" if failed == 0 else "unexposed"
        tail = "" if failed == 0 else f"; {failed} failed in all"
    else:
        low, high = m["loss_rate_interval_95"]
        sure = f"; {percent(m['loss_rate'])} ({percent(low)}-{percent(high)} at 95%)"
        kind, tail = "lost", f"; {failed} failed in all"
    if not m.get("complete", True):
        kind = "incomplete"
    return Cell(kind, f"{m['lost_total']} / {m['exposed_total']} lost", f"{over}{sure}{tail}")


def verdict_matrix(
    scenarios: dict[str, dict[str, Any]], modes: list[str]
) -> list[tuple[str, list[Cell | None]]]:
    """Modes (rows, in `modes`' order) x scenarios (columns, in `scenarios`' order), from
    the comparison document's `scenarios`; None where a mode did not run a scenario."""
    return [
        (
            mode,
            [
                verdict_cell(cmp_["modes"][mode]) if mode in cmp_["modes"] else None
                for cmp_ in scenarios.values()
            ],
        )
        for mode in modes
    ]


def comparison_doc(
    summaries: dict[str, dict[str, list[dict[str, Any]]]],
    repeats: int,
    profile: str,
    labs_at_once: int | None,
    cpus: int | None,
    timing: dict[str, Any] | None = None,
    lab: str | None = None,
) -> dict[str, Any]:
    """scenario -> mode -> its runs' summaries (each with its `run_dir`), to the
    comparison document `make experiment` writes. `labs_at_once` and `cpus` None: not
    known (a comparison of runs made elsewhere); `lab`: where the runs ran (`local`, or
    a cluster's inventory such as `onebox`), None when not known."""
    return {
        "lab": lab,
        "repeats": repeats,
        "profile": profile,
        # labs side by side on this machine's CPUs: what the runs shared
        "labs_at_once": labs_at_once,
        "cpus": cpus,
        "scenarios": {
            sc: compare(by_mode, valid_runs_asked=repeats) for sc, by_mode in summaries.items()
        },
        "run_dirs": {
            sc: {m: [s["run_dir"] for s in runs] for m, runs in by_mode.items()}
            for sc, by_mode in summaries.items()
        },
        **({"timing": timing} if timing is not None else {}),
    }


def invalid_runs(scenarios: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(mode, scenario, its entry in invalid_runs) for each invalid run of the comparison
    document's `scenarios`: what the page and the console list, shown, not counted."""
    return [
        (mode, sc, bad)
        for sc, cmp_ in scenarios.items()
        for mode, m in cmp_["modes"].items()
        for bad in m["invalid_runs"]
    ]
