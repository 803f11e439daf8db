"""A lab's addresses are the machine's: a second command on a lab another holds is
refused at once, naming the holder, by every entry point (runbook.localcluster.lablock).

Once, two checkouts' `make experiment` on lab 1 at the same moment both exited 0: the
second HAProxy bound beside the first (SO_REUSEPORT), the second lab's containers died
on `address already in use` and the first lab's processes answered its checks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT
from runbook.localcluster import lablock
from runbook.localcluster.topology import Topology

ELSEWHERE = "/srv/another-checkout"


@contextlib.contextmanager
def held_by_another_command(index: int, lock_dir: Path = lablock.LOCK_DIR) -> Iterator[int]:
    """Lab `index`'s lock held by another process, as another checkout's command holds
    it. Yields its pid."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from runbook.localcluster import lablock
        f = lablock.claim({index}, "make experiment", Path({ELSEWHERE!r}), Path({str(lock_dir)!r}))
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_a_held_lab_is_refused_naming_the_other_checkout(tmp_path: Path) -> None:
    with held_by_another_command(7, tmp_path) as pid:
        with pytest.raises(lablock.LabBusy) as busy:
            lablock.claim(7, "run-experiment.yml", ROOT, tmp_path)
        assert str(busy.value).startswith(
            f"lab 7 is in use by make experiment in {ELSEWHERE} (pid {pid}, since "
        )
        # all or nothing: lab 6 was free, and is free again after the refusal
        with pytest.raises(lablock.LabBusy):
            lablock.claim_all([6, 7], "make experiment", ROOT, tmp_path)
        six = lablock.claim(6, "make experiment", ROOT, tmp_path)
        assert six is not None
        six.close()
    # released when its holder exits, however it exits
    seven = lablock.claim(7, "make experiment", ROOT, tmp_path)
    assert seven is not None
    seven.close()


def test_a_lab_an_ancestor_holds_is_this_commands_own(tmp_path: Path) -> None:
    """`make experiment` holds its labs; its converge playbook and runs are its children."""
    held = lablock.claim(8, "make experiment", ROOT, tmp_path)
    assert held is not None
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from runbook.localcluster import lablock; "
            f"print(lablock.claim(8, 'run', Path('.'), Path({str(tmp_path)!r})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    held.close()
    assert child.returncode == 0 and child.stdout.strip() == "None", child.stderr


@pytest.fixture
def listener_on_haproxys_address() -> Iterator[tuple[Topology, int]]:
    """Another process listening on lab 182's HTTPS frontend, as another checkout's
    HAProxy would. Yields the lab and the process's pid."""
    topology = Topology(182)
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket()
        s.bind(({topology.haproxy_ip!r}, 8443))
        s.listen()
        print("listening", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield topology, proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_check_names_the_process_on_the_labs_address(
    listener_on_haproxys_address: tuple[Topology, int], tmp_path: Path
) -> None:
    topology, pid = listener_on_haproxys_address
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.localcluster.lablock",
            "check",
            f"--lab-index={topology.index}",
            f"--lab-dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"lab {topology.index}'s address {topology.haproxy_ip}:8443 is held by pid {pid} ("
    ), result.stderr
    assert "another checkout's lab, or one left running" in result.stderr


def test_make_experiment_is_refused_on_a_lab_another_checkout_holds(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    with held_by_another_command(171) as pid:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "runbook.runners.all",
                "--modes=current,ordered",
                "--scenarios=inflight",
                "--first-lab-index=170",
                f"--artifacts={artifacts}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"lab 171 is in use by make experiment in {ELSEWHERE} (pid {pid}" in result.stderr
    assert "FIRST_LAB=, now 170" in result.stderr
    assert not artifacts.exists() and not (ROOT / ".lab" / "170").exists()
    assert not (ROOT / ".lab" / "171").exists()


@pytest.mark.parametrize(
    ("playbook", "lab_var"),
    [("playbooks/run-experiment.yml", "lab_index"), ("site.yml", "verify_lab_index")],
)
def test_a_playbook_stops_before_its_haproxy_would_bind_beside_another(
    listener_on_haproxys_address: tuple[Topology, int], tmp_path: Path, playbook: str, lab_var: str
) -> None:
    """run-experiment.yml by hand, and site.yml's verify lab: refused before HAProxy
    would bind beside the other, naming it; nothing of the lab's is started."""
    topology, pid = listener_on_haproxys_address
    lab_root = tmp_path / "labs"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            playbook,
            "-e",
            "mode=current",
            "-e",
            f"{lab_var}={topology.index}",
            "-e",
            f"lab_root={lab_root}",
            "-e",
            f"experiment_artifacts={tmp_path / 'artifacts'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert result.returncode != 0
    said = f"{topology.haproxy_ip}:8443 is held by pid {pid} ("
    assert said in result.stdout, result.stdout[-3000:]
    assert not (lab_root / str(topology.index) / "haproxy.pid").exists()
    assert not (tmp_path / "artifacts").exists()
    with socket.socket() as probe:  # the listener is still the other's alone
        probe.settimeout(2)
        probe.connect((topology.haproxy_ip, 8443))
