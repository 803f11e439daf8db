"""`ansible-playbook playbooks/run-experiment.yml` by hand, stopped mid-run by each
signal that ends a command: Ctrl-C (SIGINT to the terminal's process group), SIGTERM
(a CI timeout, `timeout(1)`, systemd) and SIGHUP (a closing terminal). The run keeps
what it recorded and says `interrupted`, and nothing of the lab is left, HAProxy
included: Ansible itself never reaches its `always:` step on SIGTERM or SIGHUP, so the
runner stops the lab's HAProxy (`--stop-haproxy`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, VENV_BIN, as_a_terminal_job, lab_leftovers
from runbook.artifacts.events import read_jsonl
from runbook.localcluster.topology import Topology

pytestmark = pytest.mark.e2e
LAB = Topology(176)
#: A runner stopped mid-run finalizes its artifacts and stops its pods in seconds.
CLEANUP_BOUND_S = 45


def wait_for_termination(artifacts: Path, proc: subprocess.Popen[str]) -> Path:
    """The run directory, once its gateway pod's termination has been issued."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the playbook ended before the termination"
        for events in artifacts.glob("*/collected/experiment.jsonl"):
            if any(e["kind"] == "termination_issued" for e in read_jsonl(events)):
                return events.parent.parent
        time.sleep(0.25)
    raise AssertionError("the run never reached the termination")


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_run_by_hand_stopped_by_a_signal_keeps_its_record_and_leaves_nothing(
    tmp_path: Path, sig: signal.Signals
) -> None:
    artifacts = tmp_path / "artifacts"
    lab_root = tmp_path / "lab"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "ansible-playbook"),
            "playbooks/run-experiment.yml",
            "-e",
            "mode=ordered",
            "-e",
            f"lab_index={LAB.index}",
            "-e",
            f"lab_root={lab_root}",
            "-e",
            f"experiment_artifacts={artifacts}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_a_terminal_job,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )
    try:
        run_dir = wait_for_termination(artifacts, proc)
        time.sleep(1)
        os.killpg(proc.pid, sig)
        proc.communicate(timeout=120)
        deadline = time.monotonic() + CLEANUP_BOUND_S
        while lab_leftovers(artifacts, [LAB]) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert lab_leftovers(artifacts, [LAB]) == []
    assert json.loads((run_dir / "journal.json").read_text())["status"] == "interrupted"
    result = json.loads((lab_root / str(LAB.index) / "result.json").read_text())
    assert result == {"run_dir": str(run_dir), "status": "interrupted"}
    assert (run_dir / "report.html").exists()
    assert len(read_jsonl(run_dir / "requests.jsonl")) > 20
