"""An interrupted run keeps what it wrote and says so in journal.json.

A real run of `python -m runbook.runners.local` behind a real HAProxy (plain HTTP here, to
keep the test small), interrupted with SIGINT while the gateway pod terminates.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from helpers import local_run
from runbook.artifacts.events import read_jsonl
from runbook.localcluster.topology import Topology

LAB = Topology(185)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_sigint_mid_run_keeps_the_artifacts_and_says_interrupted(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    with local_run(tmp_path, LAB, artifacts) as run:
        assert run.stdout is not None
        deadline = time.monotonic() + 90
        for line in run.stdout:
            if "terminating" in line:
                break
            assert time.monotonic() < deadline, "the run never reached the termination"
        time.sleep(2)
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 130
    (run_dir,) = artifacts.iterdir()
    journal = json.loads((run_dir / "journal.json").read_text())
    assert journal["status"] == "interrupted"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert any("interrupted" in note for note in summary["notes"])
    requests = read_jsonl(run_dir / "requests.jsonl")
    assert len(requests) > 20  # what was recorded before the interrupt is kept
    assert any(e["kind"] == "termination_issued" for e in read_jsonl(run_dir / "events.jsonl"))
    assert (run_dir / "report.html").exists()
