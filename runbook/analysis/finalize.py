"""The one step after a run, on both targets: merge `collected/*.jsonl` into
`events.jsonl`, then write summary.json, journal.json and report.html.

    python -m runbook.analysis.finalize --run-dir artifacts/RUN --status completed

The run directory holds `plan.json` (the runner wrote it before the load started) and,
once the termination was issued, `termination.json` (when, which pod on which node,
through which LB).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..artifacts import events as ev
from ..artifacts.journal import STATUSES, Journal
from ..artifacts.rundir import RAW_REQUESTS, write_json, write_result
from ..artifacts.termination import Termination, read_termination
from ..model.plan import RunPlan
from .accounting import account
from .report import write_run_report
from .summary import summarize, verdict


def read_plan(run_dir: Path) -> RunPlan:
    return RunPlan.from_dict(json.loads((run_dir / "plan.json").read_text()))


def finalize(
    run_dir: Path, plan: RunPlan, status: str, journal: Journal, term: Termination | None
) -> dict[str, Any] | None:
    """events.jsonl, then summary.json, journal.json and report.html (no summary and no
    report when the run stopped before the termination: there is nothing to judge)."""
    ev.merge(run_dir)
    events = ev.read_jsonl(run_dir / "events.jsonl")
    raw = ev.read_jsonl(run_dir / RAW_REQUESTS)
    summary = None
    if term is not None:
        records, phases = account(raw, events, asdict(term))
    else:
        records, phases = raw, None
    with (run_dir / "requests.jsonl").open("x", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if term is not None:
        summary = summarize(
            records,
            events,
            {
                **plan.as_dict(),
                "termination_ms": term.ms,
                "terminated_pod": term.pod,
                "terminated_node": term.node,
                "event": term.event,
                # each pod the event terminated, when its own termination began
                "terminations": term.pods,
                "lb": term.lb,
            },
            phases,
        )
        summary["notes"] = plan.notes + (
            [] if status == "completed" else [f"run {status}: the figures cover what was recorded"]
        )
        if status != "completed":
            summary["valid"] = False
            summary["invalid_reasons"].insert(0, f"the run was {status}, not completed")
        write_json(run_dir / "summary.json", summary)
    journal.replay(events)  # the homelab runner's steps, recorded in its own process
    journal.write(run_dir / "journal.json", status, summary, None if term is None else term.ms)
    if summary is not None:
        write_run_report(run_dir)
    return summary


def print_summary(run_dir: Path, summary: dict[str, Any] | None) -> None:
    if summary is None:
        print(f"no summary: the run stopped before the termination ({run_dir})", flush=True)
        return
    c = summary["classes"]
    t = summary["timings_s"]
    lines = [
        "",
        f"== {verdict(summary)}",
        f"   long requests {summary['long_request_s']}s; "
        f"this path protects {summary['protected_s']}s",
        "   "
        + "  ".join(f"{k}: {v['ok']}/{v['total']} ok {v['by_error'] or ''}" for k, v in c.items()),
        f"   in flight at termination: {summary['in_flight_at_termination']} "
        f"{summary['in_flight_by_class']}, cut: {summary['cut_in_flight']} "
        f"{summary['cut_in_flight_by_error'] or ''}",
        f"   termination -> LB DOWN {t['termination_to_lb_down']}s, preStop {t['prestop']}s, "
        f"pod gone {t['termination_to_pod_gone']}s, drain overhead {t['drain_overhead']}s",
        *(
            f"   {p['pod']} on {p['node']}: terminating at {p['at_s']}s, gone "
            f"{p['gone_after_s']}s later; {p['lost']} lost of {p['exposed']} exposed"
            for p in summary.get("terminations", [])
            if len(summary["terminations"]) > 1
        ),
        f"   artifacts: {run_dir}",
        f"   report:    {run_dir / 'report.html'}",
    ]
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--status", default="completed", choices=STATUSES)
    p.add_argument("--target", default="homelab", choices=("local", "homelab"))
    # `make experiment`'s: how the run ended, once its artifacts are written
    p.add_argument("--result-file", help="write {run_dir, status} here (empty: nowhere)")
    args = p.parse_args()
    plan = read_plan(args.run_dir)
    journal = Journal(plan.mode, plan.scenario, plan.profile, args.target)
    term = read_termination(args.run_dir)
    print_summary(args.run_dir, finalize(args.run_dir, plan, args.status, journal, term))
    if args.result_file:
        write_result(Path(args.result_file), args.run_dir, args.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
