"""Merge a homelab run's collected event files, then write summary, journal and report.

    python -m lab.finalize --run-dir artifacts/RUN --mode improved --profile seed \
        --termination-ms T --pod service-a-igw-abc --node worker1 --lb worker1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .events import read_jsonl
from .experiment import Journal, finish_run, print_summary


def merge_events(run_dir: Path, lb: str | None) -> int:
    """events.jsonl from collected/*.jsonl, on one clock, in time order. HAProxy lines
    from other LBs than the one the load went through are kept but renamed."""
    events = []
    for path in sorted((run_dir / "collected").glob("*.jsonl")):
        for e in read_jsonl(path):
            if e.get("source") == "haproxy" and lb and e.get("lb") not in (None, lb):
                e["kind"] = f"other_lb_{e['kind']}"
            events.append(e)
    events.sort(key=lambda e: e["ts_ms"])
    with (run_dir / "events.jsonl").open("x", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return len(events)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--scenario", default="inflight")
    p.add_argument("--profile", default="seed")
    p.add_argument("--termination-ms", type=float, required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--lb", help="hostname of the HAProxy the load went through")
    p.add_argument("--status", default="completed")
    args = p.parse_args()
    meta = json.loads((args.run_dir / "plan.json").read_text())
    merge_events(args.run_dir, args.lb)
    journal = Journal(args.mode, args.scenario, args.profile)
    summary = finish_run(
        args.run_dir,
        meta,
        args.mode,
        args.scenario,
        args.profile,
        args.status,
        journal,
        args.termination_ms,
        args.pod,
        args.node,
    )
    print_summary(args.run_dir, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
