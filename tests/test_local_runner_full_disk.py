"""A full disk stops a run at once, in one line naming the file and the room left.

A real run of `python -m runbook.runners.local` behind a real HAProxy, its artifacts on
a small tmpfs of its own that is filled to the last byte mid-load: once, the load went
on unrecorded for seconds, finalize died with a traceback and the caller's result said
`running`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import fill, lab_leftovers, local_run
from runbook.artifacts.events import read_jsonl
from runbook.artifacts.writes import WriteFailures, describe_write_failure
from runbook.localcluster.topology import Topology

LAB = Topology(184)


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_the_failure_names_the_file_and_the_room_left(small_disk: Path) -> None:
    fill(small_disk)
    path = small_disk / "requests.raw.jsonl"
    reported: list[str] = []
    failures = WriteFailures(reported.append)
    with pytest.raises(OSError) as exc, path.open("x", buffering=1) as f:
        f.write("x" * 10_000 + "\n")
    failures.report(path, exc.value)
    failures.report(small_disk / "other", exc.value)  # only the first is kept
    assert reported == [failures.first]
    assert failures.first == describe_write_failure(path, exc.value)
    assert failures.first.startswith(f"cannot write {path}: No space left on device (")
    assert failures.first.endswith(" free of 8.0 MiB there)")


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_a_full_disk_stops_the_run_at_once_and_says_why(tmp_path: Path, small_disk: Path) -> None:
    artifacts = small_disk / "artifacts"
    result_file = tmp_path / "result.json"
    lines: list[str] = []
    with local_run(tmp_path, LAB, artifacts, f"--result-file={result_file}") as run:
        assert run.stdout is not None
        deadline = time.monotonic() + 90
        for line in run.stdout:
            lines.append(line)
            if "load:" in line:  # the load has started: the records are being written
                break
            assert time.monotonic() < deadline, "the load never started"
        time.sleep(1)
        (run_dir,) = artifacts.iterdir()
        raw_before = (run_dir / "requests.raw.jsonl").read_text().splitlines()
        fill(small_disk)
        filled = time.monotonic()
        lines += run.stdout.readlines()
        code = run.wait(60)
        ended = time.monotonic()
    out = "".join(lines)
    assert code == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    said = [ln for ln in lines if ln.startswith("runbook.runners.local: failed: cannot write ")]
    assert len(said) == 1, out[-3000:]
    assert "No space left on device (" in said[0] and " free of 8.0 MiB there)" in said[0]
    assert f"what was written is kept in {run_dir}" in said[0]
    # at once: the scenario had tens of seconds of load and the termination ahead
    assert "load finished" not in out and "terminating" not in out
    assert ended - filled < 15, ended - filled
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed"
    assert result["reason"].startswith("cannot write ") and str(run_dir) in result["reason"]
    # what was written before is kept, every line whole but perhaps the last one cut
    assert json.loads((run_dir / "plan.json").read_text())["mode"] == "current"
    raw_after = read_jsonl(run_dir / "requests.raw.jsonl")
    assert len(raw_after) >= len(raw_before) > 0
    assert [r["request_id"] for r in raw_after[: len(raw_before) - 1]] == [
        json.loads(line)["request_id"] for line in raw_before[:-1]
    ]
    # finalize did not run on the full disk: no half-written outputs
    assert not any((run_dir / name).exists() for name in ("events.jsonl", "summary.json"))
    assert not list(run_dir.glob("*.part"))
    assert lab_leftovers(artifacts, [LAB]) == []
