"""Where `make experiment` runs, named by an inventory folder (`inventory/<name>`): the
local lab (`local`: labs side by side on this machine, each with its own HAProxy and
stand-ins), or a cluster (`onebox`, `homelab`: the inventory's `experiment_target` is
`homelab`). A cluster is one lab: its modes run one after the other, each mode's runs
one `playbooks/run-experiment.yml` on its inventory (the mode flipped once, then each
run), after one `site.yml` has converged it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model import registry

LOCAL = "local"
#: What run-experiment.yml calls a cluster's experiment (the validate role's word).
CLUSTER_KIND = "homelab"


@dataclass(frozen=True)
class Target:
    name: str
    inventory: Path
    #: the inventory's `experiment_target`: local or homelab
    kind: str
    #: the inventory's timing profile (the cluster's runs take it; the local lab's
    #: `make experiment` chooses its own)
    profile: str

    @property
    def is_cluster(self) -> bool:
        return self.kind == CLUSTER_KIND


def names(checkout: Path) -> list[str]:
    """The inventories in the checkout: the targets one may name."""
    return sorted(p.parent.name for p in (checkout / "inventory").glob("*/hosts.yml"))


def inventory_vars(inventory: Path) -> dict[str, Any]:
    """localhost's variables in `inventory`, as Ansible reads them (templates unrendered)."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-inventory"),
            *("-i", str(inventory)),
            *("--host", "localhost"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise ValueError(f"ansible-inventory cannot read {inventory}: {proc.stderr.strip()}")
    doc = json.loads(proc.stdout)
    return doc if isinstance(doc, dict) else {}


def target_for(name: str, checkout: Path) -> Target:
    """The target `name` names, or ValueError naming the ones there are."""
    known = names(checkout)
    if name not in known:
        raise ValueError(
            f"--target {name!r} is not one of: {', '.join(known)} (the folders in inventory/)"
        )
    inventory = checkout / "inventory" / name
    found = inventory_vars(inventory)
    kind, profile = found.get("experiment_target"), found.get("timing_profile")
    if kind not in (LOCAL, CLUSTER_KIND) or not isinstance(profile, str):
        raise ValueError(
            f"inventory/{name} sets experiment_target={kind!r} and timing_profile={profile!r}: "
            f"it needs experiment_target {LOCAL} or {CLUSTER_KIND} and a timing profile"
        )
    return Target(name, inventory, kind, profile)


def playbook_argv(
    inventory: Path | None, playbook: str, extra_vars: dict[str, object]
) -> list[str]:
    """`ansible-playbook [-i <inventory>] <playbook> -e <extra vars as JSON>` (JSON: a
    path with a space or an `=` stays one value; no inventory: ansible.cfg's)."""
    as_json = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in extra_vars.items()})
    return [
        str(Path(sys.executable).parent / "ansible-playbook"),
        *(("-i", str(inventory)) if inventory else ()),
        playbook,
        *("-e", as_json),
    ]


def run_args(scenario: str, result_file: Path) -> list[str]:
    """What one run adds to a local lab's runner command: the scenario, and where its
    result goes."""
    return [f"--scenario={scenario}", f"--result-file={result_file}"]


def cluster_runs_args(runs: list[tuple[str, Path]]) -> list[str]:
    """What a cluster mode's runs add to its run-experiment.yml: each run's scenario, its
    event (from its case name, registry.case) and where its result goes, in order
    (experiment-homelab.yml runs them one after the other, after one flip)."""
    entries = []
    for case, f in runs:
        sc, ev = registry.split_case(case)
        entries.append({"scenario": sc, "event": ev, "result_file": str(f)})
    return ["-e", json.dumps({"experiment_runs": entries})]


#: The banner of each cluster run's first task (playbooks/tasks/experiment-run.yml).
RUN_MARKER = re.compile(r"^TASK \[.*start run (\d+) of (\d+) \(([^)]*)\)\]")


def run_started(line: str) -> int | None:
    """The number (from 1) of the cluster run a playbook output line starts, or None."""
    found = RUN_MARKER.match(line)
    return int(found.group(1)) if found else None


@dataclass
class Console:
    """What of one run's output a person follows on the console: the local runner's
    progress (`[  12.3s] ...`) and verdict (`== ...`); a cluster mode's plays (`PLAY
    [name] ***` as `name`, shown once one of its tasks ran: run-experiment.yml imports
    the other target's plays, all skipped), the start of each of its runs (`run 2 of 6
    (steady)`) and failures."""

    target: Target
    play: str | None = None

    def shown(self, line: str) -> list[str]:
        if not self.target.is_cluster:
            return [line] if line.startswith(("[", "== ")) else []
        if line.startswith("PLAY ["):
            self.play = line[len("PLAY [") :].rstrip("* ").removesuffix("]")
            return []
        marker = RUN_MARKER.match(line)
        if marker:
            # a run starting: its play is under way, whatever its first task does
            number, total, scenario = marker.groups()
            shown = [self.play] if self.play is not None else []
            self.play = None
            return [*shown, f"run {number} of {total} ({scenario})"]
        out = []
        if self.play is not None and line.startswith(("ok:", "changed:", "fatal:", "failed:")):
            out.append(self.play)
            self.play = None
        if line.startswith(("fatal:", "failed:", "ERROR!")):
            out.append(line)
        return out
