"""What a `busy` run costs: the machine's CPU and the wall time of each run, read while
`make experiment`'s runner drives the runs, nothing else running on the machine.

    .venv/bin/python benchmarks/busy_cost.py [--modes ordered] [--repeats 1] \\
        [--target onebox] [--artifacts DIR]

The CPU is the whole machine's: /proc/stat's busy time (user, nice, system, irq,
softirq, steal) sampled every 0.5 s, summed over each run's window (its journal's
start to end). On the local lab that is the lab (HAProxy, the Envoys, the pods, the
stand-ins) plus the load (vegeta, the driver) and the runner; on onebox the cluster
too. Prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.5


def busy_ticks() -> int:
    """The machine's busy CPU time so far, in clock ticks (every CPU together)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def sample(samples: list[tuple[float, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append((time.time(), busy_ticks()))
        stop.wait(SAMPLE_S)
    samples.append((time.time(), busy_ticks()))


def cpu_between(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """CPU-seconds busy between two wall times (the samples just inside the window)."""
    inside = [(t, ticks) for t, ticks in samples if start <= t <= end]
    if len(inside) < 2:
        raise ValueError("the window is shorter than the sampling interval")
    return (inside[-1][1] - inside[0][1]) * TICK_S


def wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="ordered")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--target", default="local")
    p.add_argument("--artifacts", type=Path)
    # the tests use labs 160 and up: from 60 a benchmark collides with none of them
    p.add_argument("--first-lab-index", type=int, default=60)
    args = p.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="busy-cost-"))
    argv = [
        sys.executable,
        "-m",
        "runbook.runners.all",
        "--scenarios=busy",
        f"--modes={args.modes}",
        f"--repeats={args.repeats}",
        f"--artifacts={artifacts}",
    ]
    if args.target == "local":
        argv.append(f"--first-lab-index={args.first_lab_index}")
    else:
        argv.append(f"--target={args.target}")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(samples, stop))
    sampler.start()
    started = time.time()
    try:
        result = subprocess.run(argv, cwd=ROOT)
    finally:
        stop.set()
        sampler.join()
    ended = time.time()
    if result.returncode != 0:
        print(f"the runs failed (exit {result.returncode}); see {artifacts}", file=sys.stderr)
        return 1
    print(f"command: {' '.join(argv[1:])}")
    print(
        f"whole command: {ended - started:.0f} s wall, "
        f"{cpu_between(samples, started, ended):.0f} CPU-s (machine)\n"
    )
    cpus = os.cpu_count()
    print(
        f"| mode | run wall s | machine CPU-s | cores busy (of {cpus}) | records "
        "| CPU-ms per request |"
    )
    print("|---|---|---|---|---|---|")
    for run in sorted(artifacts.glob("*-busy-*")):
        journal = json.loads((run / "journal.json").read_text())
        start, end = wall(journal["start"]), wall(journal["end"])
        cpu = cpu_between(samples, start, end)
        records = sum(1 for _ in (run / "requests.jsonl").open())
        print(
            f"| {journal['mode']} | {end - start:.1f} | {cpu:.1f} | {cpu / (end - start):.2f} "
            f"| {records:,} | {1000 * cpu / records:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
