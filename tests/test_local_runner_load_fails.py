"""A load that fails before the termination stops the run there: no pod is terminated
for a run that could measure nothing. Found on onebox, where every h2 run's gRPC
client could not start (no CA) and the run still deleted its gateway pod first.

A real `python -m runbook.runners.local` behind a real HAProxy that speaks plain HTTP:
the h2 scenario's gRPC channel fails its TLS handshake at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import local_run
from runbook.localcluster.topology import Topology

LAB = Topology(179)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]


def test_a_load_that_failed_first_terminates_no_pod(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    # any file passes the up-front CA check; the handshake with a plain port cannot
    ca = tmp_path / "not-the-lab-ca.pem"
    ca.write_text("not a certificate\n")
    with local_run(tmp_path, LAB, artifacts, "--scenario=h2", f"--ca={ca}") as run:
        out, _ = run.communicate(timeout=180)
    assert run.returncode != 0, out
    assert "terminating " not in out, out
    (run_dir,) = artifacts.iterdir()
    assert not (run_dir / "termination.json").exists()
