"""The load driver on its own, for the homelab: the playbook terminates the pod.

Short requests from now until --stop-at-ms; the long ones start the scenario's lead
before --termination-at-ms; requests.jsonl goes into --run-dir.

    python -m lab.loadgen --url https://192.0.2.11 --profile seed --mode improved \
        --termination-at-ms 1795300000000 --stop-at-ms 1795300300000 --run-dir artifacts/RUN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from .experiment import BadInput, check_inputs, plan
from .load import LoadDriver, Recorder


async def run(args: argparse.Namespace) -> None:
    scenario, meta = plan(args.profile, args.mode)
    run_dir = Path(args.run_dir)
    (run_dir / "plan.json").write_text(json.dumps(meta, indent=2))
    recorder = Recorder(run_dir / "requests.jsonl")
    recorder.termination_ms = args.termination_at_ms
    driver = LoadDriver(args.url, args.ca, recorder, scenario)
    shorts = asyncio.create_task(driver.shorts())
    await asyncio.sleep(
        max(0.0, (args.termination_at_ms - scenario.lead_s * 1000 - time.time() * 1000) / 1000)
    )
    longs = asyncio.create_task(driver.longs())
    print(f"long requests started ({scenario.long_s}s)", flush=True)
    await asyncio.sleep(max(0.0, (args.stop_at_ms - time.time() * 1000) / 1000))
    driver.stop_shorts()
    await longs
    await shorts
    recorder.close()
    print(f"{len(recorder.records)} requests recorded", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--ca")
    p.add_argument("--mode", required=True)
    p.add_argument("--scenario", default="inflight")
    p.add_argument("--profile", default="seed")
    p.add_argument("--termination-at-ms", type=float, required=True)
    p.add_argument("--stop-at-ms", type=float, required=True)
    p.add_argument("--run-dir", required=True)
    args = p.parse_args()
    try:
        check_inputs(args.mode, args.scenario, args.profile)
    except BadInput as exc:
        print(f"lab.loadgen: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
