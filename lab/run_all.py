"""`make experiment`: every mode on the local lab, side by side, then one comparison.

Each mode runs `playbooks/run-experiment.yml` in its own isolated lab (its own loopback
/16, ports and files), so the whole command takes about as long as its longest run.

    python -m lab.run_all [--modes current,improved] [--profile quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path

from .experiment import MODE_FILES, BadInput, check_inputs
from .report import write_comparison

ROOT = Path(__file__).resolve().parent.parent


async def run_mode(
    mode: str, index: int, profile: str, scenario: str, artifacts: Path | None
) -> tuple[int, str]:
    lab_dir = ROOT / ".lab" / str(index)
    lab_dir.mkdir(parents=True, exist_ok=True)
    progress = lab_dir / "progress.log"
    progress.unlink(missing_ok=True)
    log_path = lab_dir / "ansible.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ansible-playbook"),
            "playbooks/run-experiment.yml",
            "-e",
            f"mode={mode}",
            "-e",
            f"lab_index={index}",
            "-e",
            f"scenario={scenario}",
            "-e",
            f"experiment_profile={profile}",
            *(["-e", f"experiment_artifacts={artifacts}"] if artifacts else []),
            cwd=ROOT,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        shown = 0
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
            if progress.exists():
                lines = progress.read_text().splitlines()
                for line in lines[shown:]:
                    print(f"[{mode:>8}] {line}", flush=True)
                shown = len(lines)
    return proc.returncode or 0, log_path.read_text(errors="replace")


async def main_async(
    modes: list[str], profile: str, scenario: str, first_index: int, artifacts: Path | None
) -> int:
    started = time.monotonic()
    results = await asyncio.gather(
        *(run_mode(m, first_index + i, profile, scenario, artifacts) for i, m in enumerate(modes))
    )
    runs: list[Path] = []
    failed = False
    for mode, (code, log) in zip(modes, results, strict=True):
        match = re.findall(r"artifacts: (\S+)'", log)
        if code != 0 or not match:
            failed = True
            print(f"\n[{mode}] the playbook failed (exit {code}); its last lines:", file=sys.stderr)
            print("\n".join(log.splitlines()[-25:]), file=sys.stderr)
            continue
        runs.append(Path(match[-1]).resolve())
    if runs:
        table, page = write_comparison(
            runs, runs[0].parent / f"comparison-{runs[0].name.split('-')[0]}.html"
        )
        print("\n" + table)
        print(f"\ncomparison report: {page}")
        for run in runs:
            print(f"run report:        {run / 'report.html'}")
    print(f"wall time: {time.monotonic() - started:.1f}s for {len(modes)} modes side by side")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODE_FILES))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--scenario", default="inflight")
    parser.add_argument("--first-lab-index", type=int, default=1)
    parser.add_argument("--artifacts", type=Path, help="default: the inventory's (artifacts/)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    try:
        for mode in modes:
            check_inputs(mode, args.scenario, args.profile)
    except BadInput as exc:
        print(f"lab.run_all: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        main_async(
            modes,
            args.profile,
            args.scenario,
            args.first_lab_index,
            args.artifacts.resolve() if args.artifacts else None,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
