"""runbook.artifacts.rundir: the one place a run directory is named, for both targets."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runbook.artifacts.writes import WriteFailures, written

ROOT = Path(__file__).resolve().parent.parent


def make_run_dir(artifacts: Path, *args: str) -> Path:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.artifacts.rundir",
            f"--artifacts={artifacts}",
            *(args or ("--scenario=steady", "--mode=ordered")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(proc.stdout.strip())


def test_the_cli_names_a_new_run_directory_and_never_reuses_one(tmp_path: Path) -> None:
    """What the homelab playbook runs: a second run in the same second gets a suffix
    instead of the first one's folder."""
    artifacts = tmp_path / "artifacts"
    first, second = make_run_dir(artifacts), make_run_dir(artifacts)
    assert first.is_dir() and second.is_dir() and first != second
    assert re.fullmatch(r"\d{8}T\d{6}Z-steady-ordered", first.name), first.name
    if first.name[:16] == second.name[:16]:
        assert second.name == f"{first.name}-2"


def test_verify_s_lb_folder_is_new_each_time(tmp_path: Path) -> None:
    """verify.yml keeps the HAProxy states and config it read in a folder of its own: a
    second verify never writes over the first's."""
    artifacts = tmp_path / "artifacts"
    first = make_run_dir(artifacts, "--name=verify-lb")
    second = make_run_dir(artifacts, "--name=verify-lb")
    assert first != second and first.is_dir() and second.is_dir()
    assert re.fullmatch(r"\d{8}T\d{6}Z-verify-lb(-2)?", second.name), second.name
    refused = subprocess.run(
        [sys.executable, "-m", "runbook.artifacts.rundir", f"--artifacts={artifacts}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--name" in refused.stderr


def test_a_write_that_fails_for_want_of_room_is_reported_not_raised(tmp_path: Path) -> None:
    said: list[str] = []
    failures = WriteFailures(said.append)
    target = tmp_path / "plan.json"
    assert written(lambda: target.write_text("{}"), target, failures)
    assert said == []

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    assert not written(full, target, failures)
    assert len(said) == 1 and str(target) in said[0]

    def other() -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        written(other, target, WriteFailures())
