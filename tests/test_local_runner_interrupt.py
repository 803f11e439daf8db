"""An interrupted run keeps what it wrote and says so in journal.json.

A real run of `python -m runbook.runners.local` behind a real HAProxy (plain HTTP here, to
keep the test small), interrupted with SIGINT while the gateway pod terminates.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, as_a_terminal_job, render_manifests
from runbook.artifacts.events import read_jsonl
from runbook.localcluster.topology import Topology
from runbook.model.registry import HAPROXY_BACKEND

LAB = Topology(185)


def haproxy_cfg(tmp: Path) -> Path:
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
    stats socket {tmp}/admin.sock mode 600 level admin
    log {LAB.haproxy_ip}:5514 local0
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 500ms
frontend plain
    bind {LAB.haproxy_ip}:18080
    default_backend {HAPROXY_BACKEND}
backend {HAPROXY_BACKEND}
    option httpchk
    http-check send meth GET uri /health_check.html ver HTTP/1.1 hdr Host t
    http-check expect status 200
    option log-health-checks
    default-server check port 30180 inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server worker1 {LAB.node_ip(1)}:30080
    server worker2 {LAB.node_ip(2)}:30080
""")
    return cfg


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_sigint_mid_run_keeps_the_artifacts_and_says_interrupted(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    render = render_manifests(manifests, {"timing_profile": "quick"})
    assert render.returncode == 0, render.stdout
    haproxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(haproxy_cfg(tmp_path))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    artifacts = tmp_path / "artifacts"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook.runners.local",
            "--mode",
            "current",
            "--lab-index",
            "185",
            "--manifests",
            str(manifests),
            "--haproxy-socket",
            str(tmp_path / "admin.sock"),
            "--haproxy-url",
            f"http://{LAB.haproxy_ip}:18080",
            "--syslog",
            f"{LAB.haproxy_ip}:5514",
            "--artifacts",
            str(artifacts),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_a_terminal_job,
    )
    try:
        assert run.stdout is not None
        deadline = time.monotonic() + 90
        for line in run.stdout:
            if "terminating" in line:
                break
            assert time.monotonic() < deadline, "the run never reached the termination"
        time.sleep(2)
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 130
    finally:
        if run.poll() is None:
            run.kill()
        haproxy.terminate()
        haproxy.wait(10)
    (run_dir,) = artifacts.iterdir()
    journal = json.loads((run_dir / "journal.json").read_text())
    assert journal["status"] == "interrupted"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert any("interrupted" in note for note in summary["notes"])
    requests = read_jsonl(run_dir / "requests.jsonl")
    assert len(requests) > 20  # what was recorded before the interrupt is kept
    assert any(e["kind"] == "termination_issued" for e in read_jsonl(run_dir / "events.jsonl"))
    assert (run_dir / "report.html").exists()
