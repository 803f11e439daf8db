"""The run directory: `artifacts/<UTC stamp>-<scenario>[-<event>]-<mode>/`, never reused, and the
small files a run leaves in it for whoever started it.

    python -m runbook.artifacts.rundir --artifacts artifacts --scenario inflight --mode ordered

makes a new one and prints its path (the homelab playbook names its runs this way);
`--name verify-lb` makes `artifacts/<UTC stamp>-verify-lb/` the same way.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..model.registry import DEFAULT_EVENT

#: What the load driver writes, one record a request as the client saw it; the finalize
#: step joins each with every hop's line into requests.jsonl.
RAW_REQUESTS = "requests.raw.jsonl"


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(artifacts: Path, scenario: str, mode: str, event: str = DEFAULT_EVENT) -> Path:
    """`<stamp>-<scenario>-<mode>`, or `<stamp>-<scenario>-<event>-<mode>` for an event
    other than the seed's deletion."""
    case = scenario if event == DEFAULT_EVENT else f"{scenario}-{event}"
    return new_stamped_dir(artifacts, f"{case}-{mode}")


def new_stamped_dir(artifacts: Path, name: str) -> Path:
    """`artifacts/<UTC stamp>-<name>[-N]/`, made now, never one that exists."""
    artifacts.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp()
    for n in range(1, 100):
        suffix = "" if n == 1 else f"-{n}"
        path = artifacts / f"{stamp}-{name}{suffix}"
        try:
            path.mkdir()  # never reuse: artifacts are never overwritten
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot find a fresh run directory under {artifacts}")


def write_json(path: Path, doc: Any) -> None:
    """A new JSON file; refuses to overwrite one."""
    with path.open("x", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def write_result(path: Path, run_dir: Path, status: str, reason: str | None = None) -> None:
    """The run's result for its caller (`make experiment`): where, how it ended and, when
    it failed for a reason it could name, why. Written when the run directory exists
    (`running`) and again when it ends; it lives in the lab's scratch folder, not in
    artifacts (which may be what failed)."""
    doc: dict[str, Any] = {"run_dir": str(run_dir), "status": status}
    if reason is not None:
        doc["reason"] = reason
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "run_dir" in doc else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make a new run directory, print its path")
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--scenario")
    parser.add_argument("--mode")
    parser.add_argument("--event", default=DEFAULT_EVENT)
    # another stamped folder: verify.yml keeps the LB's files it read in one
    parser.add_argument("--name", help="a folder <stamp>-<name> instead of a run's")
    # the homelab playbook's run, for `make experiment`: `running` from here on
    parser.add_argument("--result-file", help="a run's: write {run_dir, status} here")
    args = parser.parse_args(argv)
    if args.name:
        print(new_stamped_dir(args.artifacts, args.name))
    elif args.scenario and args.mode:
        run_dir = new_run_dir(args.artifacts, args.scenario, args.mode, args.event)
        if args.result_file:
            write_result(Path(args.result_file), run_dir, "running")
        print(run_dir)
    else:
        parser.error("give --scenario and --mode (a run directory) or --name")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
