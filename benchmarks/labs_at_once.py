"""False DOWNs against how many labs share the machine: `make experiment` (every mode
in both scenarios) at each `--labs-at-once`, and optionally with timing overrides (the
check timeout), counting every run whose HAProxy took a server out of rotation that the
run did not terminate (summary.json `servers_out`), and the invalid runs.

    .venv/bin/python benchmarks/labs_at_once.py --labs 8,4,2 [--repeats 3] \\
        [--timing-overrides '{"haproxy_check_timeout_s": 0.25}']

Each setting's runs go to a folder of their own under --artifacts (default: a new
folder in /tmp). Prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_batch(labs: int, repeats: int, overrides: str, artifacts: Path) -> dict[str, object]:
    started = time.monotonic()
    argv = [
        sys.executable,
        "-m",
        "runbook.runners.all",
        f"--labs-at-once={labs}",
        f"--repeats={repeats}",
        f"--artifacts={artifacts}",
        f"--timing-overrides={overrides}",
    ]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in sorted(artifacts.glob("*/summary.json"))]
    out = [o for s in summaries for o in s.get("servers_out", [])]
    return {
        "labs": labs,
        "runs": len(summaries),
        "runs_with_false_down": sum(1 for s in summaries if s.get("servers_out")),
        "false_downs": len(out),
        "invalid": sum(1 for s in summaries if not s.get("valid", True)),
        "whys": sorted({str(o.get("why")) for o in out}),
        "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", default="8,4,2,1", help="labs at once, each in turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing-overrides", default="{}")
    parser.add_argument("--artifacts", type=Path)
    args = parser.parse_args()
    base = args.artifacts or Path(tempfile.mkdtemp(prefix="labs-at-once-"))
    rows = []
    for labs in (int(n) for n in args.labs.split(",")):
        folder = base / f"labs-{labs}-{time.strftime('%Y%m%dT%H%M%S')}"
        print(f"{labs} labs at once -> {folder} ...", flush=True)
        rows.append(run_batch(labs, args.repeats, args.timing_overrides, folder))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ncpus: {len(os.sched_getaffinity(0))}; timing overrides: {args.timing_overrides}")
    print("| labs at once | runs | runs with a false DOWN | false DOWNs | invalid | wall (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['labs']} | {r['runs']} | {r['runs_with_false_down']} | {r['false_downs']} "
            f"| {r['invalid']} | {r['wall_s']} |"
        )
    for r in rows:
        if r["whys"]:
            print(f"{r['labs']} at once, checks that failed: {'; '.join(map(str, r['whys']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
