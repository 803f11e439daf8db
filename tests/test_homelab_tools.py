"""What of the homelab path runs without a cluster: the HAProxy collector (as the workers
run it) against a real HAProxy, the event merge, playbook syntax, and the inventory
preflight. Nothing here connects to the inventory's (example) addresses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, VENV_BIN, Proc, Procs, free_port, http
from runbook.artifacts.events import merge, read_jsonl
from runbook.collectors import haproxy as haproxy_collector
from runbook.model import registry

PLAYBOOK = str(VENV_BIN / "ansible-playbook")


def haproxy_config(tmp: Path, check_port: int, server_port: int, syslog: str) -> Path:
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
    stats socket {tmp}/admin.sock mode 600 level admin
    log {syslog} local0
defaults
    mode http
    log global
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 500ms
backend {registry.HAPROXY_BACKEND}
    option httpchk
    http-check send meth GET uri /health_check.html ver HTTP/1.1 hdr Host t
    http-check expect status 200
    option log-health-checks
    server worker1 127.0.0.1:{server_port} check port {check_port} inter 200ms fall 2 rise 2
""")
    return cfg


@contextlib.contextmanager
def haproxy_checking_hc(procs: Procs, tmp: Path) -> Iterator[tuple[Proc, str]]:
    """A real HAProxy whose worker1 is checked against a real hc, logging to a syslog
    address of its own: (hc, that address); stopped afterwards."""
    hc = procs.hc()
    syslog = f"127.0.0.1:{free_port()}"
    cfg = haproxy_config(tmp, hc.port, free_port(), syslog)
    haproxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1)  # its first checks
        yield hc, syslog
    finally:
        haproxy.terminate()
        haproxy.wait(10)


def test_the_collector_default_backend_is_the_registry_name() -> None:
    # the script cannot import the registry (it runs alone on the workers)
    assert haproxy_collector.DEFAULT_BACKEND == registry.HAPROXY_BACKEND


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_collector_runs_alone_and_records_states_and_log_lines(
    procs: Procs, tmp_path: Path
) -> None:
    """Copied out of the package and run by the system's python3 in isolated mode, as
    the homelab playbook runs it on a worker: state changes from the runtime API and
    log-health-checks lines over syslog; SIGTERM stops it at once, lines kept."""
    script = tmp_path / "copied" / "haproxy_collector.py"
    script.parent.mkdir()
    shutil.copy(ROOT / "runbook" / "collectors" / "haproxy.py", script)
    out = tmp_path / "haproxy-worker9.jsonl"
    with haproxy_checking_hc(procs, tmp_path) as (hc, syslog):
        argv = [
            "/usr/bin/python3",
            "-I",
            str(script),
            f"--socket={tmp_path / 'admin.sock'}",
            f"--syslog={syslog}",
            "--lb=worker9",
            "--seconds=60",
            f"--out={out}",
        ]
        collector = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert collector.stdout is not None and collector.stdout.readline() == "collecting\n"
        time.sleep(0.5)
        http("POST", hc.url + "/drain")
        http("POST", hc.url + "/close-lb")
        time.sleep(1.5)
        started = time.monotonic()
        collector.terminate()
        assert collector.wait(5) == 0
        assert time.monotonic() - started < 2  # not the 60 s it was given
    events = read_jsonl(out)
    assert {e["lb"] for e in events} == {"worker9"}
    states = [(e["server"], e["status"].split()[0]) for e in events if e["kind"] == "server_state"]
    assert states[0] == ("worker1", "UP")
    assert ("worker1", "DOWN") in states
    logs = [e["line"] for e in events if e["kind"] in ("health_check_log", "server_log")]
    assert any("worker1" in line and "DOWN" in line for line in logs), logs
    # refuses to overwrite its output
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode != 0 and "FileExistsError" in again.stderr


def test_the_copied_collector_reads_the_states_once_for_verify(
    procs: Procs, tmp_path: Path
) -> None:
    """--show-stat: what the verify playbook runs on each worker (system python3)."""
    script = tmp_path / "copied" / "haproxy_collector.py"
    script.parent.mkdir()
    shutil.copy(ROOT / "runbook" / "collectors" / "haproxy.py", script)
    with haproxy_checking_hc(procs, tmp_path):
        time.sleep(1)
        once = subprocess.run(
            [
                "/usr/bin/python3",
                "-I",
                str(script),
                f"--socket={tmp_path / 'admin.sock'}",
                "--show-stat",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout) == {"worker1": "UP"}
    bare = subprocess.run(
        ["/usr/bin/python3", "-I", str(script), "--socket=x"], capture_output=True, text=True
    )
    assert bare.returncode == 2 and "--lb, --seconds, --out" in bare.stderr


def test_show_stat_is_read_as_csv() -> None:
    text = (
        "# pxname,svname,qcur,status,extra\n"
        "igw_nodeports,FRONTEND,,OPEN,\n"
        'igw_nodeports,worker1,0,"UP 1/2",x\n'
        "igw_nodeports,worker2,0,DOWN,\n"
        "other,worker1,0,UP,\n"
    )
    assert haproxy_collector.parse_show_stat(text, "igw_nodeports") == {
        "worker1": "UP 1/2",
        "worker2": "DOWN",
    }
    assert haproxy_collector.parse_show_stat("Unknown command\n", "igw_nodeports") == {}


def test_merge_orders_every_collector_file_and_skips_a_cut_line(tmp_path: Path) -> None:
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
    assert merge(tmp_path) == 3
    merged = read_jsonl(tmp_path / "events.jsonl")
    assert [e["ts_ms"] for e in merged] == [10, 20, 30]
    assert [e.get("lb") for e in merged] == ["worker2", None, "worker1"]
    with pytest.raises(FileExistsError):
        merge(tmp_path)


@pytest.mark.parametrize(
    ("inventory", "playbook"),
    [
        ("inventory/homelab", "site.yml"),
        ("inventory/homelab", "playbooks/run-experiment.yml"),
        ("inventory/homelab", "playbooks/verify.yml"),
        ("inventory/local", "site.yml"),
        ("inventory/local", "playbooks/run-experiment.yml"),
        ("inventory/local", "playbooks/verify.yml"),
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


def test_preflight_refuses_an_lb_that_is_not_a_worker(tmp_path: Path) -> None:
    code, out = run_preflight(
        tmp_path,
        MASTER
        + "    workers:\n      hosts:\n        worker1: {ansible_host: 192.0.2.11}\n"
        + "        worker2: {ansible_host: 192.0.2.12}\n"
        + "  vars:\n    experiment_lb_host: master1\n",
    )
    assert code != 0 and "experiment_lb_host=master1 must be one of the workers" in out


def refused_runs(runs: object) -> str:
    """run-experiment.yml on the homelab inventory with `runs` as experiment_runs,
    which must fail: its output on one line (nothing reaches a host: 192.0.2.0/24 is
    not routed here)."""
    result = subprocess.run(
        [
            PLAYBOOK,
            *("-i", "inventory/homelab"),
            "playbooks/run-experiment.yml",
            *("-e", "mode=ordered"),
            *("-e", json.dumps({"experiment_runs": runs})),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join(result.stdout.split())
    assert result.returncode != 0, out[-2000:]
    return out


@pytest.mark.parametrize(
    "runs",
    [
        [{"scenario": "inflight"}, {"scenario": "soak"}],
        [],
        ["inflight"],
        [{"result_file": "/tmp/r.json"}],
    ],
)
def test_a_bad_list_of_runs_is_refused_before_the_cluster_is_touched(runs: object) -> None:
    """run-experiment.yml on the homelab inventory with a bad experiment_runs: refused
    by its first play, naming the value and what is allowed."""
    out = refused_runs(runs)
    assert f"experiment_runs={json.dumps(runs)} must be a non-empty list" in out, out[-2000:]
    assert "one of inflight, steady" in out
    assert "PLAY [Flip the gateway" not in out


def test_runs_that_want_two_protocols_to_the_gateways_are_refused() -> None:
    """One flip, one HAProxy config: runs whose scenarios have HAProxy speak HTTP/1.1 and
    HTTP/2 to the gateways are refused by the first play, naming both."""
    out = refused_runs([{"scenario": "steady"}, {"scenario": "h2"}])
    assert '["steady", "h2"] mix scenarios whose HAProxy speaks h1 and h2' in out, out[-2000:]
    assert "PLAY [Flip the gateway" not in out


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


@pytest.mark.parametrize(
    ("helm_says", "refused"),
    [
        (None, "helm on the controller: not found"),
        ("v4.0.1", "helm on the controller: v4.0.1"),
        ("v3.17.2", None),
    ],
)
def test_preflight_wants_helm_3_before_anything_changes(
    tmp_path: Path, helm_says: str | None, refused: str | None
) -> None:
    """The preflight's own check of the controller's helm (a stand-in `helm` that only
    prints a version: what is tested is our refusal, not Helm)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if helm_says is not None:
        helm = bin_dir / "helm"
        helm.write_text(f"#!/bin/sh\necho {helm_says}\n")
        helm.chmod(0o755)
    result = subprocess.run(
        [PLAYBOOK, "-i", "inventory/homelab", "playbooks/preflight.yml", "--tags", "helm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}:{VENV_BIN}:/usr/bin:/bin"},
    )
    out = " ".join(result.stdout.split())
    if refused is None:
        assert result.returncode == 0, out[-2000:]
    else:
        assert result.returncode != 0 and refused in out and "Helm 3" in out, out[-2000:]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_the_playbook_collector_tasks_run_in_the_background_and_fetch(
    procs: Procs, tmp_path: Path
) -> None:
    """The homelab playbook's own task files (copy, `command` with async/poll 0, wait,
    fetch) against localhost and a real HAProxy: the start returns at once while the
    collector runs (the `script` action it replaced cannot run async), the fetch stops
    it (SIGTERM, well before its 4 s bound) and the fetched file holds HAProxy's state
    changes."""
    with haproxy_checking_hc(procs, tmp_path) as (hc, syslog):
        tasks = ROOT / "playbooks" / "tasks"
        dest = tmp_path / "run" / "collected" / "haproxy-worker9.jsonl"
        collector_vars = {
            "collector_src": str(ROOT / "runbook" / "collectors" / "haproxy.py"),
            "collector_path": str(tmp_path / "worker" / "haproxy_collector.py"),
            "collector_out": str(tmp_path / "worker" / "out.jsonl"),
            "collector_socket": str(tmp_path / "admin.sock"),
            "collector_syslog": syslog,
            "collector_lb": "worker9",
            "collector_seconds": 4,
            "collector_dest": str(dest),
        }
        start, fetch = (
            [{"ansible.builtin.include_tasks": str(tasks / f"haproxy-collector-{step}.yml")}]
            for step in ("start", "fetch")
        )
        play = tmp_path / "play.yml"
        play.write_text(
            json.dumps(
                [
                    {
                        "name": "start",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "vars": collector_vars,
                        "tasks": start,
                    },
                    {
                        "name": "meanwhile: the check fails",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "tasks": [
                            {"ansible.builtin.uri": {"url": f"{hc.url}/drain", "method": "POST"}},
                            {
                                "ansible.builtin.uri": {
                                    "url": f"{hc.url}/close-lb",
                                    "method": "POST",
                                }
                            },
                            # the run's tail: the fetch stops the collector at once
                            {"ansible.builtin.pause": {"seconds": 3}},
                        ],
                    },
                    {
                        "name": "fetch",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "vars": collector_vars,
                        "tasks": fetch,
                    },
                ]
            )
        )
        result = subprocess.run(
            [PLAYBOOK, "-i", "localhost,", "-c", "local", str(play)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        )
    assert result.returncode == 0, result.stdout[-3000:]
    events = read_jsonl(dest)
    states = [(e["server"], e["status"].split()[0]) for e in events if e["kind"] == "server_state"]
    assert ("worker1", "UP") in states and ("worker1", "DOWN") in states, states
    assert {e["lb"] for e in events} == {"worker9"}
