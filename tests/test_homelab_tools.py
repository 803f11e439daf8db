"""What of the homelab path runs without a cluster: the HAProxy poller against a real
HAProxy, the event merge, playbook syntax, and the inventory preflight. Nothing here
connects to the inventory's (example) addresses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, VENV_BIN, Procs, free_port, http
from lab.events import read_jsonl
from lab.finalize import merge_events

PLAYBOOK = str(VENV_BIN / "ansible-playbook")


def haproxy_config(tmp: Path, check_port: int, server_port: int) -> Path:
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
    stats socket {tmp}/admin.sock mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 500ms
backend igw_nodeports
    option httpchk
    http-check send meth GET uri /health_check.html ver HTTP/1.1 hdr Host t
    http-check expect status 200
    server worker1 127.0.0.1:{server_port} check port {check_port} inter 200ms fall 2 rise 2
""")
    return cfg


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_poll_records_state_changes(procs: Procs, tmp_path: Path) -> None:
    hc = procs.hc()
    cfg = haproxy_config(tmp_path, hc.port, free_port())
    haproxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    out = tmp_path / "poll.jsonl"
    try:
        time.sleep(1)
        poller = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "lab" / "haproxy_poll.py"),
                "--socket",
                str(tmp_path / "admin.sock"),
                "--seconds",
                "3",
                "--out",
                str(out),
            ]
        )
        time.sleep(0.8)
        http("POST", hc.url + "/drain")
        http("POST", hc.url + "/close-lb")
        assert poller.wait(10) == 0
    finally:
        haproxy.terminate()
        haproxy.wait(10)
    states = [
        (e["server"], e["status"].split()[0])
        for e in read_jsonl(out)
        if e["kind"] == "server_state"
    ]
    assert states[0] == ("worker1", "UP")
    assert ("worker1", "DOWN") in states
    # refuses to overwrite its output
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "lab" / "haproxy_poll.py"),
            "--socket",
            str(tmp_path / "admin.sock"),
            "--seconds",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "FileExistsError" in again.stderr


def test_merge_orders_events_and_marks_other_lbs(tmp_path: Path) -> None:
    collected = tmp_path / "collected"
    collected.mkdir()
    (collected / "haproxy-worker1.jsonl").write_text(
        json.dumps({"ts_ms": 30, "source": "haproxy", "kind": "server_state", "lb": "worker1"})
        + "\n"
    )
    (collected / "haproxy-worker2.jsonl").write_text(
        json.dumps({"ts_ms": 10, "source": "haproxy", "kind": "server_state", "lb": "worker2"})
        + "\n"
    )
    (collected / "endpointslices.jsonl").write_text(
        json.dumps({"ts_ms": 20, "source": "endpointslice", "kind": "conditions"})
        + "\n"
        + '{"ts_ms": 40, "sou'
    )  # a line cut by an interrupted collector
    assert merge_events(tmp_path, "worker1") == 3
    merged = read_jsonl(tmp_path / "events.jsonl")
    assert [e["ts_ms"] for e in merged] == [10, 20, 30]
    assert [e["kind"] for e in merged] == ["other_lb_server_state", "conditions", "server_state"]
    with pytest.raises(FileExistsError):
        merge_events(tmp_path, "worker1")


@pytest.mark.parametrize(
    ("inventory", "playbook"),
    [
        ("inventory/homelab", "site.yml"),
        ("inventory/homelab", "playbooks/run-experiment.yml"),
        ("inventory/local", "playbooks/run-experiment.yml"),
    ],
)
def test_playbooks_pass_syntax_check(inventory: str, playbook: str) -> None:
    result = subprocess.run(
        [PLAYBOOK, "-i", inventory, playbook, "--syntax-check", "-e", "mode=improved"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_preflight(tmp_path: Path, hosts_yaml: str) -> tuple[int, str]:
    """preflight.yml against a hand-written inventory: (exit code, output on one line)."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(hosts_yaml)
    result = subprocess.run(
        [PLAYBOOK, "-i", str(inv), "playbooks/preflight.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, " ".join(result.stdout.split())


MASTER = (
    "all:\n  children:\n    kube_control_plane:\n      hosts:\n"
    "        master1: {ansible_host: 192.0.2.10}\n"
)


def test_preflight_refuses_an_inventory_without_workers(tmp_path: Path) -> None:
    code, out = run_preflight(tmp_path, MASTER + "    workers: {}\n")
    assert code != 0 and "at least one in workers (got 0)" in out


def test_preflight_refuses_a_bad_address(tmp_path: Path) -> None:
    code, out = run_preflight(
        tmp_path,
        MASTER + "    workers:\n      hosts:\n        worker1: {ansible_host: 'worker one'}\n",
    )
    assert code != 0 and "worker1: ansible_host=worker one is not an address" in out


def test_preflight_accepts_the_homelab_inventory() -> None:
    # the kube context check needs kubectl and the cluster's kubeconfig: cluster only
    result = subprocess.run(
        [PLAYBOOK, "-i", "inventory/homelab", "playbooks/preflight.yml", "--skip-tags", "cluster"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
