"""Verify the converged haproxy role: config, TLS, redirect, and the check marking DOWN/UP.

The check target is the real hc sidecar (`python -m hc`), driven through its state
machine: /close-lb makes /health_check.html answer 503, /reopen makes it 200 again.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runbook.model.registry import HAPROXY_BACKEND

VARS = yaml.safe_load(
    (
        Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parents[1]))
        / "vars"
        / "main.yml"
    ).read_text()
)


def runtime_api(command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(VARS["haproxy_stats_socket"])
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_status(name: str = "worker1") -> str:
    for line in runtime_api("show stat").splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == HAPROXY_BACKEND and fields[1] == name:
            return fields[17]
    raise AssertionError("server not in show stat")


def wait_status(want: str, timeout: float = 8.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server_status().startswith(want):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"server never became {want}; last: {server_status()}")


def test_config_is_valid(host) -> None:
    result = host.run(f"haproxy -c -f {VARS['haproxy_config_path']}")
    assert result.rc == 0, result.stdout + result.stderr
    config = host.file(VARS["haproxy_config_path"]).content_string
    assert "timeout server 34s" in config  # quick profile: VS timeout 32 + margin 2
    assert "inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions" in config
    assert "option log-health-checks" in config


def test_key_is_private(host) -> None:
    key = host.file(VARS["haproxy_cert_path"] + ".key")
    assert key.exists and key.mode == 0o600


def test_listens_on_the_tls_port(host) -> None:
    assert host.socket(f"tcp://127.0.0.1:{VARS['haproxy_https_port']}").is_listening


def test_tls_handshake_with_the_generated_certificate() -> None:
    ctx = ssl.create_default_context(cafile=VARS["haproxy_cert_path"])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", VARS["haproxy_https_port"]), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=VARS["haproxy_cert_common_name"]) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.getpeercert()["subject"] == ((("commonName", "igw.molecule.test"),),)


def test_tls_1_1_is_refused() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with (
        socket.create_connection(("127.0.0.1", VARS["haproxy_https_port"]), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw)


def test_http_redirects_to_https() -> None:
    conn = http.client.HTTPConnection("127.0.0.1", VARS["haproxy_http_port"], timeout=5)
    conn.request("GET", "/sleep?seconds=1", headers={"Host": "igw.molecule.test"})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == (
        f"https://igw.molecule.test:{VARS['haproxy_https_port']}/sleep?seconds=1"
    )


@pytest.fixture
def stand_in_hc() -> Iterator[str]:
    port = VARS["haproxy_check_port"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hc"],
        env={**os.environ, "HC_ADDR": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
        return r.status


def test_check_marks_down_on_503_and_up_on_200(stand_in_hc: str) -> None:
    wait_status("UP")
    assert post(stand_in_hc + "/drain") == 200  # DRAINING: the check still passes
    time.sleep(1.5)
    assert server_status() == "UP"
    assert post(stand_in_hc + "/close-lb") == 200  # CLOSING: 503
    took = wait_status("DOWN")
    assert took <= 0.5 * 2 + 0.5 + 0.5  # fall x inter + check timeout + a poll's slack
    assert post(stand_in_hc + "/reopen") == 200  # OPEN: 200 again
    wait_status("UP")
