"""The verify playbook's checks: each judgment on hand-made facts (pass and fail), then
the local lab for real: HAProxy provisioned by site-local.yml's roles, the mode's pods
started by the verifier, one run that passes and one with every pitfall at once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, VENV_BIN, free_port
from runbook.analysis import checks
from runbook.collectors import haproxy as haproxy_collector
from runbook.collectors.haproxy_config import haproxy_settings, haproxy_source
from runbook.collectors.tls import tls_accepts
from runbook.localcluster.topology import NODES, Topology
from runbook.model import timing
from runbook.model.durations import haproxy_seconds

LAB = 199  # apart from make experiment's labs (1..8) and site.yml's (200)


def test_each_check_passes_and_fails_on_its_facts() -> None:
    labels = {"app": "gw", "istio": "gw"}
    assert checks.gateway_selector({"istio": "gw"}, labels).result == "pass"
    bad = checks.gateway_selector({"istio": "other"}, labels)
    assert bad.result == "fail" and "not matched: {'istio': 'other'}" in bad.detail
    assert checks.envoy_listener(8080, {"p1": ["10.0.0.1:8080"]}).result == "pass"
    assert checks.envoy_listener(8080, {"p1": []}).result == "fail"
    assert checks.no_restarts({"p/hc": 0}).result == "pass"
    assert checks.no_restarts({"p/hc": 2}).result == "fail"
    local = checks.node_local_check({"w1": 200, "w2": 200, "m1": None}, {"w1", "w2"})
    assert local.result == "pass"
    trap = checks.node_local_check({"w1": 200, "w2": 200, "m1": 200}, {"w1", "w2"})
    assert trap.result == "fail" and "Cluster-policy trap" in trap.fix
    assert checks.rollout_seats(2, 1, 0, True, 3).result == "pass"
    seats = checks.rollout_seats(2, 1, 0, True, 2)
    assert seats.result == "fail" and "untaint master1" in seats.fix
    assert checks.timing_budget("quick", {}).result == "pass"
    budget = checks.timing_budget("quick", {"lb_buffer_s": 1})
    assert budget.result == "fail" and "lb_buffer_exceeds_lb_detection" in budget.detail
    # istio-native deploys no LB_BUFFER: a slower check the plan raised it for holds,
    # and the profile's LB_BUFFER is not read in its place
    slower = {"haproxy_check_timeout_s": 1, "nolb_wait_s": 2}
    planned = timing.report("quick", {**slower, "lb_buffer_s": 3})["numbers"]
    assert checks.timing_budget("quick", slower).result == "fail"
    assert checks.timing_budget("quick", slower, planned).result == "pass"
    assert checks.keepalive(10, 3600).result == "pass"
    assert checks.keepalive(75, 60).result == "fail"
    assert checks.lb_servers_up({"w1": "UP", "w2": "UP"}).result == "pass"
    assert checks.lb_servers_up({"w1": "UP", "w2": "DOWN"}).result == "fail"
    assert checks.tls_versions({"TLSv1.2": True, "TLSv1.1": False}).result == "pass"
    assert checks.tls_versions({"TLSv1.2": True, "TLSv1.1": True}).result == "fail"
    assert checks.lb_topology(None, {"w1", "w2"}).result == "pass"
    assert checks.lb_topology("w1", {"w1", "w2"}).result == "pass"  # victim: w2's gateway
    alone = checks.lb_topology("w1", {"w1"})
    assert alone.result == "fail" and "experiment_lb_host" in alone.fix
    assert checks.timeout_server(34, 32).result == "pass"
    assert checks.timeout_server(50, 305).result == "fail"


def test_haproxy_settings_are_read_back() -> None:
    assert (haproxy_seconds("500ms"), haproxy_seconds("2s"), haproxy_seconds("1m")) == (
        0.5,
        2,
        60,
    )
    cfg = (
        "defaults\n    timeout server 34s\n    timeout check 500ms\nbackend b\n"
        "    server worker1 127.0.0.1:30080 check port 30180 inter 500ms fall 2 rise 2\n"
    )
    got = haproxy_settings(cfg)
    assert got["haproxy_timeout_server_s"] == 34 and got["haproxy_check_timeout_s"] == 0.5
    assert (got["haproxy_inter_s"], got["haproxy_fall"], got["haproxy_rise"]) == (0.5, 2, 2)
    assert got["pool_purge_delay_s"] == 5
    assert haproxy_source(cfg) is None  # the kernel picks: the LB host's own address
    placed = cfg.replace("backend b\n", "backend b\n    source 127.31.0.1\n")
    assert haproxy_source(placed) == "127.31.0.1"
    assert haproxy_source("defaults\n    source 10.0.0.5:0\n") == "10.0.0.5"  # a port too


def test_a_lab_address_names_its_node() -> None:
    one = Topology(1)
    assert [one.node_at(one.ip_of_node(n)) for n in NODES] == list(NODES)
    assert one.node_at(one.haproxy_ip) is None  # an address of its own
    assert one.node_at(Topology(2).ip_of_node("worker1")) is None  # another lab's
    assert one.node_at(None) is None


def test_the_tls_probe_can_offer_tls_1_1_so_a_refusal_is_the_server_s(tmp_path: Path) -> None:
    """Against a server that allows TLS 1.1 the probe's 1.1 handshake succeeds: the
    frontend's refusal in the lab run is HAProxy's ssl-min-ver, not our client."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1"),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1

    port = free_port()
    server = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with contextlib.suppress(ssl.SSLError, OSError):
                ctx.wrap_socket(conn, server_side=True).close()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert tls_accepts(f"127.0.0.1:{port}", ssl.TLSVersion.TLSv1_1)
        assert tls_accepts(f"127.0.0.1:{port}", ssl.TLSVersion.TLSv1_2)
    finally:
        server.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local lab site.yml provisions (manifests, certificate, a running HAProxy),
    in a lab of its own; HAProxy is stopped afterwards."""
    root = tmp_path_factory.mktemp("lab")
    result = subprocess.run(
        [
            *(str(VENV_BIN / "ansible-playbook"), "playbooks/site-local.yml"),
            *("-e", f"verify_lab_index={LAB}", "-e", f"lab_root={root}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lab_dir = root / str(LAB)
    try:
        yield lab_dir
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((lab_dir / "haproxy.pid").read_text().split()[0]), signal.SIGTERM)


def verify(lab_dir: Path, manifests: Path, artifacts: Path) -> tuple[int, dict, str]:
    net = f"127.{30 + LAB}"
    result = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "runbook.runners.verify",
                "local",
                "--mode=ordered",
                f"--lab-index={LAB}",
            ),
            *(f"--scratch-dir={lab_dir / 'verify'}", f"--manifests={manifests}"),
            f"--haproxy-socket={lab_dir / 'admin.sock'}",
            f"--haproxy-config={lab_dir / 'haproxy.cfg'}",
            *(f"--haproxy-address={net}.0.100:8443", f"--artifacts={artifacts}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (report,) = artifacts.glob("verify-*.json")
    doc = json.loads(report.read_text())
    return result.returncode, {c["name"]: c for c in doc["checks"]}, result.stdout


def test_the_provisioned_lab_passes_every_check(lab: Path, tmp_path: Path) -> None:
    code, found, out = verify(lab, lab / "manifests", tmp_path)
    assert code == 0, out
    assert all(c["result"] == "pass" for c in found.values()), out
    assert len(found) == 12 and "12 of 12 checks passed" in out
    # the inventory places HAProxy on worker1 (its `source`): the check reads it back
    assert found["lb_is_not_the_terminated_gateway_s_node"]["detail"].startswith(
        "LB on node worker1;"
    ), out


def edit_yaml(path: Path, change) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        change(d)
    path.write_text(yaml.safe_dump_all(docs))


def test_every_pitfall_is_named_with_its_fix(lab: Path, tmp_path: Path) -> None:
    broken = tmp_path / "manifests"
    shutil.copytree(lab / "manifests", broken)

    def selector(d: dict) -> None:  # a Gateway selector that matches no pod
        if d["kind"] == "Gateway":
            d["spec"]["selector"] = {"istio": "ingressgateway"}

    def cluster_policy(d: dict) -> None:  # the Cluster-policy trap
        if d["kind"] == "Service" and d["spec"].get("type") == "NodePort":
            d["spec"]["externalTrafficPolicy"] = "Cluster"

    def gateway(d: dict) -> None:
        if d["kind"] != "Deployment":
            return
        d["spec"]["replicas"] = 3  # + surge 1 > the lab's 3 nodes
        pod = d["spec"]["template"]["spec"]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "workload-socket"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                if e["name"] == "LB_BUFFER":
                    e["value"] = "1"  # under HAProxy's worst detection (1.5 s)

    edit_yaml(broken / "30-gateway.yaml", selector)
    edit_yaml(broken / "22-igw-service.yaml", cluster_policy)
    edit_yaml(broken / "23-igw-ordered.yaml", gateway)
    # a worker HAProxy does not count UP (put in maintenance through the runtime API)
    sock = str(lab / "admin.sock")
    haproxy_collector.runtime_command(sock, "disable server igw_nodeports/worker2")
    try:
        code, found, out = verify(lab, broken, tmp_path / "artifacts")
    finally:
        haproxy_collector.runtime_command(sock, "enable server igw_nodeports/worker2")
    assert code == 1
    failed = {name for name, c in found.items() if c["result"] == "fail"}
    assert failed == {
        "gateway_selector_matches_pods",
        "envoy_listens_on_gateway_port",
        "proxy_volumes_mounted",
        "health_check_is_node_local",
        "rollout_has_seats",
        "timing_budget_holds",
        "lb_sees_every_worker_up",
    }, out
    assert "Cluster-policy trap" in found["health_check_is_node_local"]["fix"]
    assert "master1 (no pod): 200" in found["health_check_is_node_local"]["detail"]
    assert "lb_buffer_exceeds_lb_detection" in found["timing_budget_holds"]["detail"]
    assert "workload-spiffe-uds" in found["proxy_volumes_mounted"]["detail"]
    assert "worker2 MAINT" in found["lb_sees_every_worker_up"]["detail"]
    assert all(found[name]["fix"] for name in failed)
    assert "fix envoy_listens_on_gateway_port" in out


def test_site_yml_on_the_default_inventory_then_verify(tmp_path: Path) -> None:
    """The design card's first command on the default (local) inventory: site.yml
    provisions and ends with verify; verify alone passes after it; a second site.yml
    changes nothing."""
    lab_vars = ["-e", "verify_lab_index=198", "-e", f"lab_root={tmp_path}"]
    lab_vars += ["-e", f"experiment_artifacts={tmp_path / 'artifacts'}"]

    def play(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), *args, *lab_vars],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    try:
        first = play("site.yml")
        assert first.returncode == 0, first.stdout[-3000:]
        assert "12 of 12 checks passed" in first.stdout
        assert "Next: `make experiment`" in first.stdout
        again = play("playbooks/verify.yml")
        assert again.returncode == 0, again.stdout[-3000:]
        second = play("site.yml")
        assert second.returncode == 0, second.stdout[-3000:]
        assert " changed=0 " in second.stdout, second.stdout[-1500:]
        assert len(list((tmp_path / "artifacts").glob("verify-*.json"))) == 3
    finally:
        with contextlib.suppress(OSError, ValueError):
            pid = int((tmp_path / "198" / "haproxy.pid").read_text().split()[0])
            os.kill(pid, signal.SIGTERM)


def test_verify_refuses_a_lab_site_yml_did_not_provision(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "playbooks/verify.yml",
            "-e",
            "verify_lab_index=197",
            "-e",
            f"lab_root={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "run `ansible-playbook site.yml` first" in result.stdout


@pytest.mark.parametrize("mode_file", ["21-igw-improved.yaml", "24-igw-istio-native.yaml"])
def test_the_committed_seed_manifests_read_back_through_the_checker(mode_file: str) -> None:
    """What the homelab verification reads back from the live objects is what the
    committed manifests hold: the seed's numbers pass the seed profile's rules, and a
    deployed value out of line is caught."""
    from runbook.analysis.deployed import deployed_timing, raw_docs

    docs = raw_docs(ROOT / "manifests", mode_file)
    cfg = haproxy_settings(
        "defaults\n    timeout server 310s\n    timeout check 2s\nbackend igw_nodeports\n"
        "    server worker1 10.0.0.11:30080 check port 30180 inter 2s fall 2 rise 2\n"
    )
    deployed = deployed_timing(docs, cfg)
    assert deployed["gateway_grace_s"] == 210 and deployed["vs_timeout_s"] == 305
    assert checks.timing_budget("seed", deployed).result == "pass"
    # Debian's default `timeout server 50s`, as an untouched haproxy.cfg would have it
    broken = checks.timing_budget("seed", deployed | {"haproxy_timeout_server_s": 50})
    assert broken.result == "fail" and "haproxy_timeout_server_covers_vs_timeout" in broken.detail
    # the gateway lets go of an idle backend connection before the backend does
    assert (deployed["gateway_upstream_idle_s"], deployed["backend_keepalive_s"]) == (60, 75)
    # no DestinationRule: Envoy's hour, longer than the backend's 75 s
    bare = deployed_timing({**docs, "destinationrule": {}}, cfg)
    assert bare["gateway_upstream_idle_s"] == 3600
    idle = checks.timing_budget("seed", bare)
    assert idle.result == "fail"
    assert "gateway_lets_idle_backend_connections_go_first" in idle.detail


def test_an_experiment_run_refuses_a_lab_that_breaks_the_premise(lab: Path, tmp_path: Path) -> None:
    """The same checks run right after an experiment's bring-up: under the Cluster
    policy the run stops before any load, names the check and its fix, and keeps its
    artifacts (journal: failed)."""
    broken = tmp_path / "manifests"
    shutil.copytree(lab / "manifests", broken)

    def cluster_policy(d: dict) -> None:
        if d["kind"] == "Service" and d["spec"].get("type") == "NodePort":
            d["spec"]["externalTrafficPolicy"] = "Cluster"

    edit_yaml(broken / "22-igw-service.yaml", cluster_policy)
    net = f"127.{30 + LAB}"
    artifacts = tmp_path / "artifacts"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "runbook.runners.local"),
            *("--mode=ordered", f"--lab-index={LAB}"),
            *(f"--manifests={broken}", f"--haproxy-socket={lab / 'admin.sock'}"),
            *(f"--haproxy-url=https://{net}.0.100:8443", f"--ca={lab / 'certs' / 'igw.pem'}"),
            *(f"--syslog={net}.0.100:5515", f"--artifacts={artifacts}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode != 0
    assert "breaks the experiment's premise: health_check_is_node_local" in run.stdout
    assert "Cluster-policy trap" in run.stdout
    (run_dir,) = artifacts.iterdir()
    found = {c["name"]: c["result"] for c in json.loads((run_dir / "verify.json").read_text())}
    assert found["health_check_is_node_local"] == "fail"
    assert json.loads((run_dir / "journal.json").read_text())["status"] == "failed"
    assert not (run_dir / "summary.json").exists()  # no termination: nothing to judge
