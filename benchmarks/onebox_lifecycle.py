"""onebox's life cycle, timed: `make onebox` (from the build cache), a second
`make onebox` (nothing to change), the idle cluster's memory and CPU, `make onebox-down`.

    .venv/bin/python benchmarks/onebox_lifecycle.py [--idle-seconds 30]

Starts from no onebox (it runs `make onebox-down` first). Memory is read from each
node's memory cgroup (usage, which counts page cache, and RSS); CPU from each node's
cpuacct cgroup over the idle window. Prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(
    yaml.safe_load((ROOT / "inventory/onebox/group_vars/all/onebox.yml").read_text())[
        "onebox_state_dir"
    ]
)


def timed_make(target: str) -> float:
    started = time.monotonic()
    subprocess.run(
        ["make", "--no-print-directory", target], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
    )
    return time.monotonic() - started


def node_cgroups(controller: str) -> dict[str, Path]:
    return {
        record.parent.name: Path(json.loads(record.read_text())[controller])
        for record in sorted((STATE / "nodes").glob("*/cgroups.json"))
    }


def memory_mib() -> tuple[float, float]:
    usage = rss = 0
    for d in node_cgroups("memory").values():
        usage += int((d / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
        rss += int(stat["total_rss"])
    return usage / 2**20, rss / 2**20


def cpu_ns() -> int:
    return sum(int((d / "cpuacct.usage").read_text()) for d in node_cgroups("cpuacct").values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    timed_make("onebox-down")
    up = timed_make("onebox")
    again = timed_make("onebox")
    time.sleep(10)
    before, t0 = cpu_ns(), time.monotonic()
    time.sleep(args.idle_seconds)
    cpu = (cpu_ns() - before) / 1e9 / (time.monotonic() - t0)
    usage, rss = memory_mib()
    down = timed_make("onebox-down")
    rows = [
        ("`make onebox` from the cache (no onebox before)", f"{up:.0f} s"),
        ("`make onebox` again (changes nothing)", f"{again:.0f} s"),
        ("idle cluster, three nodes: memory usage (with page cache)", f"{usage:,.0f} MiB"),
        ("idle cluster, three nodes: RSS", f"{rss:,.0f} MiB"),
        (f"idle cluster: CPU over {args.idle_seconds:.0f} s", f"{cpu * 100:.0f}% of one core"),
        ("`make onebox-down`", f"{down:.0f} s"),
    ]
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
