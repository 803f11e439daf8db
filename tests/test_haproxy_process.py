"""runbook.localcluster.haproxy_process: the one stop of a local lab's HAProxy, used by
`make experiment`, a run by hand and an interrupt. A real HAProxy master with a
pidfile, as the haproxy role starts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT
from runbook.localcluster.haproxy_process import lab_haproxy_pids, stop_lab_haproxy

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


def start_master(lab_dir: Path) -> int:
    """`haproxy -W -D -p haproxy.pid -f haproxy.cfg`, the role's command; the master's pid."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "haproxy.cfg").write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
        f"    timeout server 1s\nfrontend f\n    bind unix@{lab_dir}/f.sock\n"
    )
    subprocess.run(
        [
            "haproxy",
            "-W",
            "-D",
            "-p",
            str(lab_dir / "haproxy.pid"),
            "-f",
            str(lab_dir / "haproxy.cfg"),
        ],
        check=True,
        timeout=10,
    )
    return int((lab_dir / "haproxy.pid").read_text().split()[0])


def gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_stops_the_labs_master_and_forgets_the_pidfile(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    master = start_master(lab_dir)
    assert lab_haproxy_pids(lab_dir) == [master]
    assert stop_lab_haproxy(lab_dir) == [master]
    assert gone(master)
    assert not (lab_dir / "haproxy.pid").exists()
    assert stop_lab_haproxy(lab_dir) == []  # nothing left to stop is not an error


def test_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """A pidfile left by a lab long gone can name a pid that now belongs to another
    process, or to another lab's HAProxy: only a process running this lab's config is
    signalled."""
    other_lab = tmp_path / "other"
    other = start_master(other_lab)
    stranger = subprocess.Popen(["sleep", "30"])
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    try:
        (lab_dir / "haproxy.pid").write_text(f"{stranger.pid}\n{other}\n")
        assert stop_lab_haproxy(lab_dir) == []
        assert stranger.poll() is None
        assert not gone(other, timeout=0.5)
    finally:
        stranger.kill()
        stranger.wait()
        stop_lab_haproxy(other_lab)


def test_the_playbooks_command_line(tmp_path: Path) -> None:
    """What run-experiment.yml's `always:` step runs, and the word it decides `changed` by."""
    lab_dir = tmp_path / "lab"
    master = start_master(lab_dir)
    cli = [sys.executable, "-m", "runbook.localcluster.haproxy_process", "stop", str(lab_dir)]
    first = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"stopped={master}" in first.stdout
    assert gone(master)
    again = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "stopped=none" in again.stdout
