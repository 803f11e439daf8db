"""The load driver's capacity through the local lab's HAProxy (TLS) and Envoy, next to
wrk on the same target in the same run.

    .venv/bin/python benchmarks/load_driver_capacity.py [--rates 25,50,100,200,400] [--seconds 5]
        [--vegeta-rates 1000,2000,3000,4000]

Provisions a lab of its own with `playbooks/site-local.yml` (manifests, certificate,
HAProxy on 127.229.0.100:8443), starts the ordered mode's pods, then:
- wrk, one thread, 50 keep-alive connections, /sleep?seconds=0, for --seconds;
- the load driver's `short` class (a new TLS connection per request, as the
  experiment sends it) at each rate of --rates for --seconds, counting what it
  recorded, its client-side errors and the rate it achieved;
- the same for the `short_pooled` class (keep-alive pool);
- the same for the busy scenario's `short_pooled`, driven by vegeta over its 50
  keep-alive connections, at each rate of --vegeta-rates: its headroom is its capacity
  over the rate busy offers (the goal: at least 2x), wrk's figure beside it saying what
  the chain itself carries.
The capacity of a class is the highest rate with no client-side error and at least
95% of the offered rate achieved. Prints one JSON object with the steady and busy
scenarios' offered rates beside it; record it in benchmarks/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import wrk  # noqa: E402

from runbook.artifacts.events import CollectedDir  # noqa: E402
from runbook.load.driver import LoadDriver, Recorder  # noqa: E402
from runbook.localcluster.cluster import LabCluster, Topology, pods_dir  # noqa: E402
from runbook.localcluster.manifests import Manifests  # noqa: E402
from runbook.model import registry  # noqa: E402
from runbook.model.plan import BUSY_POOL, LoadShape, plan  # noqa: E402
from runbook.runners import gotools  # noqa: E402
from runbook.runners.local import wait_lb_up  # noqa: E402

LAB = 199
MODE = "ordered"


def provision(root: Path) -> Path:
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "playbooks/site-local.yml",
            *(
                "-e",
                f"verify_lab_index={LAB}",
                "-e",
                f"lab_root={root}",
                "-e",
                f"verify_mode={MODE}",
            ),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return root / str(LAB)


#: the ladders' names: the driver's two short classes, and busy's pooled one by vegeta
LADDERS = {"short": "short", "short_pooled": "short_pooled", "vegeta": "short_pooled"}


async def drive(url: str, ca: str, ladder: str, rate: float, seconds: int, out: Path) -> dict:
    cls = LADDERS[ladder]
    shape = (
        LoadShape(long_s=1, sleep_count=0, stream_count=0, short_rate_per_s=rate, warmup_s=3600)
        if cls == "short"
        else LoadShape(
            long_s=1,
            scenario="busy" if ladder == "vegeta" else "steady",
            short_rate_per_s=0.001,
            pooled_rate_per_s=rate,
            long_rate_per_s=0.001,
            **({"pooled_tool": "vegeta", "pool_size": BUSY_POOL} if ladder == "vegeta" else {}),
        )
    )
    recorder = Recorder(out)
    vegeta = gotools.binary("vegeta") if ladder == "vegeta" else None
    driver = LoadDriver(url, ca, recorder, shape, vegeta)
    started = time.monotonic()
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(seconds)
    driver.stop()
    await task
    recorder.close()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    mine = [r for r in records if r["class"] == cls]
    errors = [r for r in mine if r.get("error")]
    achieved = len(mine) / seconds
    return {
        "offered_per_s": rate,
        "recorded": len(mine),
        "client_errors": len(errors),
        "error_kinds": sorted({r["error"] for r in errors}),
        "achieved_per_s": round(achieved, 1),
        "wall_s": round(time.monotonic() - started, 2),
    }


async def measure(lab_dir: Path, work: Path, rates: dict[str, list[float]], seconds: int) -> dict:
    manifests = Manifests.load(lab_dir / "manifests", registry.mode(MODE).manifest)
    run_dir = work / "run"
    pods_dir(run_dir).mkdir(parents=True)
    collected = CollectedDir(run_dir)
    cluster = LabCluster(Topology(LAB), manifests, pods_dir(run_dir), collected)
    url = f"https://{Topology(LAB).haproxy_ip}:8443"
    ca = str(lab_dir / "certs" / "igw.pem")
    try:
        await cluster.start()
        await cluster.wait_ready(60)
        await wait_lb_up(str(lab_dir / "admin.sock"), ["worker1", "worker2"], 60)
        wrk_rate, _ = await asyncio.to_thread(wrk, f"{url}/sleep?seconds=0", seconds)
        print(f"wrk: {wrk_rate:,.0f} req/s", file=sys.stderr)
        classes: dict[str, list[dict]] = {}
        for cls, ladder in rates.items():
            for i, rate in enumerate(ladder):
                result = await drive(url, ca, cls, rate, seconds, work / f"{cls}-{i}.jsonl")
                classes.setdefault(cls, []).append(result)
                print(f"{cls} at {rate:g}/s: {result}", file=sys.stderr)
                if result["client_errors"] or result["achieved_per_s"] < 0.95 * rate:
                    break
    finally:
        await cluster.stop()
        collected.close()
    capacity = {
        cls: max(
            (
                r["offered_per_s"]
                for r in results
                if not r["client_errors"] and r["achieved_per_s"] >= 0.95 * r["offered_per_s"]
            ),
            default=0,
        )
        for cls, results in classes.items()
    }
    steady = plan("quick", MODE, "steady").load.offered_per_s()
    busy = plan("quick", MODE, "busy").load.offered_per_s()
    return {
        "wrk_keepalive_per_s": wrk_rate,
        "ladder": classes,
        "capacity_per_s": capacity,
        "steady_offered_per_s": steady,
        "busy_offered_per_s": busy,
        "vegeta_headroom": round(capacity.get("vegeta", 0) / busy["short_pooled"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,200,400,800")
    parser.add_argument("--vegeta-rates", default="1000,2000,3000,4000")
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    driver_rates = [float(r) for r in args.rates.split(",")]
    rates = {
        "short": driver_rates,
        "short_pooled": driver_rates,
        "vegeta": [float(r) for r in args.vegeta_rates.split(",")],
    }
    with tempfile.TemporaryDirectory(prefix="igw-driver-") as tmp:
        work = Path(tmp)
        lab_dir = provision(work / "lab")
        try:
            report = asyncio.run(measure(lab_dir, work, rates, args.seconds))
        finally:
            pid = (lab_dir / "haproxy.pid").read_text().split()[0]
            os.kill(int(pid), signal.SIGTERM)
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, **report}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
