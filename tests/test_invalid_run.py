"""An invalid run made for real: `make experiment`'s runner (runbook.runners.all) on one
lab, with the survivor's hc stopped (SIGSTOP) just after the termination for longer
than HAProxy's check needs to mark worker1 DOWN (HAProxy sits on worker1, the victim is
worker2's gateway). That run measured the lab, not the order: it is kept, marked
invalid with the reason, and another takes its place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, as_a_terminal_job, lab_leftovers
from runbook.localcluster.topology import Topology

pytestmark = pytest.mark.e2e
LAB = Topology(166)


def survivor_hc(artifacts: Path) -> int:
    """The pid of hc in worker1's gateway pod (it listens on that pod's IP)."""
    address = f"HC_ADDR={LAB.gateway_pod_ip(1)}:".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = cwd.startswith(str(artifacts)) and cmdline[1:3] == [b"-m", b"hc"]
        if ours and any(e.startswith(address) for e in environ):
            return int(proc.name)
    raise AssertionError("no hc process of worker1's gateway pod")


def test_a_starved_survivor_makes_the_run_invalid_and_another_takes_its_place(
    tmp_path: Path,
) -> None:
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook.runners.all",
            "--modes=ordered",
            "--scenarios=inflight",
            "--repeats=1",
            f"--first-lab-index={LAB.index}",
            f"--artifacts={artifacts}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_a_terminal_job,
        start_new_session=True,
    )
    out = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            out.append(line)
            if "terminating" in line and len([x for x in out if "terminating" in x]) == 1:
                hc = survivor_hc(artifacts)
                os.kill(hc, signal.SIGSTOP)
                time.sleep(3)  # the quick profile's check: 0.5 s timeout, inter 0.5 s, fall 2
                os.kill(hc, signal.SIGCONT)
            assert time.monotonic() < deadline, "".join(out[-20:])
        assert proc.wait(60) == 0, "".join(out[-40:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert lab_leftovers(artifacts, [LAB]) == []
    runs = sorted(d for d in artifacts.iterdir() if d.is_dir())
    assert len(runs) == 2, runs
    first, second = (json.loads((d / "summary.json").read_text()) for d in runs)
    assert first["valid"] is False
    assert first["invalid_reasons"][0].startswith("worker1 (a survivor) marked DOWN at +")
    assert "by a failed check (" in first["invalid_reasons"][0]
    assert second["valid"] is True and second["failed_total"] == 0
    (comparison,) = artifacts.glob("comparison-*.json")
    ordered = json.loads(comparison.read_text())["scenarios"]["inflight"]["modes"]["ordered"]
    assert (ordered["runs"], ordered["valid_runs"], ordered["failed_all"]) == (2, 1, 0)
    assert ordered["invalid_runs"][0]["run"] == str(runs[0])
    assert "over 1 valid runs of 2" in ordered["verdict"]
    said = "".join(out)
    assert "run 1 invalid, kept in" in said and "another takes its place" in said
    assert "1 invalid run(s), shown, not counted:" in said
