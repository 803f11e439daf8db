"""State-changing POSTs only from allowed sources (beyond the seed).

NodePort 30180 exposes hc to anyone who reaches a worker; as the seed stands they could
POST /drain or /fault and take the gateway out of the LB. Two real-socket checks: a
second loopback source address, and a client in another network namespace.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from http.client import HTTPConnection

import pytest

from helpers import Procs, http, require_root_netns


def post_from(source: str, host: str, port: int, path: str) -> tuple[int, dict[str, object]]:
    conn = HTTPConnection(host, port, timeout=5, source_address=(source, 0))
    try:
        conn.request("POST", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_post_from_a_source_outside_the_list_is_403_and_changes_nothing(procs: Procs) -> None:
    hc = procs.hc({"HC_ADMIN_SOURCES": "127.0.0.1/32"})
    status, body = post_from("127.0.0.2", hc.host, hc.port, "/fault")
    assert status == 403
    assert body["remote"] == "127.0.0.2" and "127.0.0.1/32" in str(body["error"])
    assert json.loads(http("GET", hc.url + "/drain/status")[2])["state"] == "OPEN"
    # probes stay open to everyone: HAProxy checks from outside the pod
    assert http("GET", hc.url + "/health_check.html")[0] == 200
    status, body = post_from("127.0.0.1", hc.host, hc.port, "/drain")
    assert status == 200 and body["state"] == "DRAINING"
    hc.stop()
    refused = hc.logfmt_lines("refused")
    assert len(refused) == 1 and refused[0]["remote"] == "127.0.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 192.0.2.1 (pod) and 192.0.2.2 (node).

    Addresses from TEST-NET-1 exist only inside these namespaces, removed afterwards.
    """
    require_root_netns()
    tag = secrets.token_hex(3)
    pod, node = f"hcpod-{tag}", f"hcnode-{tag}"
    _ip("netns", "add", pod)
    _ip("netns", "add", node)
    try:
        _ip("link", "add", f"vp{tag}", "type", "veth", "peer", "name", f"vn{tag}")
        _ip("link", "set", f"vp{tag}", "netns", pod)
        _ip("link", "set", f"vn{tag}", "netns", node)
        for ns, dev, addr in (
            (pod, f"vp{tag}", "192.0.2.1/24"),
            (node, f"vn{tag}", "192.0.2.2/24"),
        ):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pod, node
    finally:
        _ip("netns", "del", pod)
        _ip("netns", "del", node)


def _curl_in(ns: str, *args: str) -> str:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    return out.stdout


def test_default_refuses_a_non_loopback_source_in_another_namespace(
    two_hosts: tuple[str, str], tmp_path
) -> None:
    pod, node = two_hosts
    log = (tmp_path / "hc.log").open("wb")
    hc = subprocess.Popen(
        ["ip", "netns", "exec", pod, sys.executable, "-m", "hc"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"HC_ADDR": ":18180", "PATH": "/usr/bin:/bin"},
    )
    try:
        deadline = time.monotonic() + 10
        while _curl_in(pod, "http://127.0.0.1:18180/live") != "200":
            assert time.monotonic() < deadline, (tmp_path / "hc.log").read_text()
            time.sleep(0.1)
        # the node (HAProxy's side) can read the check...
        assert _curl_in(node, "http://192.0.2.1:18180/health_check.html") == "200"
        # ...but not change state, with the default settings
        assert _curl_in(node, "-X", "POST", "http://192.0.2.1:18180/drain") == "403"
        assert _curl_in(node, "-X", "POST", "http://192.0.2.1:18180/fault") == "403"
        assert _curl_in(node, "http://192.0.2.1:18180/live") == "200"
        # the preStop runs in the pod's namespace: loopback may
        assert _curl_in(pod, "-X", "POST", "http://127.0.0.1:18180/drain") == "200"
    finally:
        hc.terminate()
        hc.wait(10)
        log.close()
