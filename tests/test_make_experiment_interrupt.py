"""Ctrl-C on `make experiment` (SIGINT to the whole process group, as a terminal sends
it), and SIGTERM and SIGHUP the same way: one line per run saying where its artifacts
are, journals saying `interrupted`, no process of the labs left when the command
returns, and the next run on the same labs works. And a second
`make experiment` in the same checkout is refused while the first runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import ROOT, as_a_terminal_job, lab_leftovers
from runbook.localcluster.topology import Topology

pytestmark = pytest.mark.e2e
FIRST_LAB = 160


def run_all(artifacts: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook.runners.all",
            f"--first-lab-index={FIRST_LAB}",
            "--repeats=1",
            f"--artifacts={artifacts}",
            "--scenarios=inflight",  # one lab per mode: the labs the checks look at
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_terminal_job,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )


def wait_for_terminations(proc: subprocess.Popen[str], count: int) -> None:
    """Until `count` runs have terminated their gateway pod (mid-load)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    terminating = set()
    for line in proc.stdout:
        if "terminating" in line:
            terminating.add(line.split("]", 1)[0])
        if len(terminating) == count:
            return
        assert time.monotonic() < deadline, "the runs never reached the termination"
    raise AssertionError("the output ended before the terminations")


def ctrl_c_after_terminations(
    proc: subprocess.Popen[str], count: int, while_running: Callable[[], None] = lambda: None
) -> list[str]:
    """SIGINT to the command's group a second after `count` runs terminated their pod
    (`while_running` checks what runs then); the lines saying where artifacts are kept."""
    try:
        wait_for_terminations(proc, count)
        while_running()
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if "interrupted: artifacts kept in" in line]
    assert len(said) == count, stderr[-3000:]
    return said


def assert_interrupted(artifacts: Path, said: list[str]) -> None:
    for run_dir in artifacts.iterdir():
        journal = json.loads((run_dir / "journal.json").read_text())
        assert journal["status"] == "interrupted"
        assert any(str(run_dir) in line for line in said)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_make_experiment_as_ctrl_c_does(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """What a CI timeout or systemd (SIGTERM) and a closing terminal (SIGHUP) send to
    `make experiment`'s process group: make returns only after every run has stopped,
    kept its artifacts and left no process behind."""
    artifacts = tmp_path / "artifacts"
    labs = [Topology(FIRST_LAB)]
    proc = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "experiment",
            "MODES=ordered",
            "SCENARIOS=inflight",
            "REPEATS=1",
            f"ARTIFACTS={artifacts}",
            f"FIRST_LAB={FIRST_LAB}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_terminal_job,
        start_new_session=True,
    )
    try:
        wait_for_terminations(proc, 1)
        time.sleep(1)
        os.killpg(proc.pid, sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # nothing goes on after make returned: checked at once, not after a while
    assert lab_leftovers(artifacts, labs) == []
    # make waits for its command, then ends itself by the same signal
    assert proc.returncode == -sig, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "interrupted: artifacts kept in" in line]
    assert len(said) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    assert_interrupted(artifacts, said)


def test_ctrl_c_leaves_nothing_running_and_keeps_the_artifacts(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    labs = [Topology(FIRST_LAB), Topology(FIRST_LAB + 1)]
    said = ctrl_c_after_terminations(run_all(artifacts, "--modes=current,improved"), 2)
    assert_interrupted(artifacts, said)
    assert lab_leftovers(artifacts, labs) == []

    # the next run on the same labs works
    again = run_all(tmp_path / "again", "--modes=improved")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out[-2000:] + err[-2000:]


def vegeta_processes() -> list[str]:
    """Any vegeta attack or encode alive on the machine (only the busy runs start one)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/vegeta") and argv[1:2] in ([b"attack"], [b"encode"]):
            found.append(f"{proc.name}: {b' '.join(argv).decode()[:120]}")
    return found


def test_ctrl_c_on_a_busy_run_leaves_no_vegeta_behind(tmp_path: Path) -> None:
    """busy's pooled class is vegeta's own processes (a session of their own, so that
    the terminal's signal is the runner's to pass on): Ctrl-C mid-load stops them with
    the rest, and what they had sent is recorded."""
    artifacts = tmp_path / "artifacts"

    def drives_vegeta() -> None:
        assert vegeta_processes(), "the busy run drives no vegeta"

    proc = run_all(artifacts, "--modes=ordered", "--scenarios=busy")
    said = ctrl_c_after_terminations(proc, 1, drives_vegeta)
    assert vegeta_processes() == []
    assert lab_leftovers(artifacts, [Topology(FIRST_LAB)]) == []
    assert_interrupted(artifacts, said)
    (run_dir,) = artifacts.iterdir()
    pooled = [
        r
        for r in map(json.loads, (run_dir / "requests.raw.jsonl").open())
        if r["class"] == "short_pooled"
    ]
    assert len(pooled) > 1000  # ten seconds at a thousand a second, before the signal


def test_a_second_make_experiment_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    first = run_all(tmp_path / "first", "--modes=improved")
    try:
        assert first.stdout is not None
        # its first line (the shared render starting): the lock on its labs is taken
        line = first.stdout.readline()
        assert "rendering every mode's manifests once" in line, line
        started = time.monotonic()
        second = run_all(tmp_path / "second", "--modes=current")
        _, err = second.communicate(timeout=30)
        assert time.monotonic() - started < 10  # at once, not after the first
        assert second.returncode == 1
        assert "another experiment is running in this checkout" in err
        assert f'"pid": {first.pid}' in err and f'"{FIRST_LAB}": "improved/inflight"' in err
        assert not (tmp_path / "second").exists()  # nothing of it started
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=120)
    assert lab_leftovers(tmp_path / "first", [Topology(FIRST_LAB)]) == []
