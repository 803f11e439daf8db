"""Cause rules on real cases: a request through a real HAProxy (with the haproxy role's
per-request log format), a real Envoy (the lab's bootstrap, its JSON access log) and
the real backend, made to fail one way at a time; the accounting must name the cause
from the hops' own lines. (The LB's shutdown-sessions case comes from the end-to-end
`current` run: tests/test_make_experiment_e2e.py.)"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import ROOT, Proc, Procs, free_port, http, wait_port
from runbook.analysis.accounting import account
from runbook.artifacts.events import now_ms, read_jsonl
from runbook.collectors.podlogs import event_from_line
from runbook.model import registry

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


def role_request_logging() -> list[str]:
    """The haproxy role's capture and log-format lines, its Jinja names filled in."""
    template = (ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2").read_text()
    lines = [
        line.strip()
        for line in template.splitlines()
        if line.strip().startswith(("http-request capture", "log-format"))
    ]
    values = {
        "rid_header": registry.REQUEST_ID_HEADER,
        "rid_tag": registry.HAPROXY_REQUEST_LOG_TAG,
    }
    return [re.sub(r"\{\{ (\w+) \}\}", lambda m: values[m.group(1)], line) for line in lines]


class Chain:
    """client -> HAProxy -> Envoy -> backend, each hop's lines collected."""

    def __init__(self, procs: Procs, tmp: Path, backend_env: dict[str, str], check: bool) -> None:
        self.tmp = tmp
        self.backend = procs.backend(backend_env)
        self.envoy = procs.envoy(self.backend)
        self.port = free_port()
        syslog = f"127.0.0.1:{free_port()}"
        # check=False: the server's check goes to a closed port, so HAProxy has no server
        check_port = self.envoy.port if check else free_port()
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            "\n".join(
                [
                    "global",
                    f"    stats socket {tmp}/admin.sock mode 600 level admin",
                    f"    log {syslog} local0",
                    "defaults",
                    "    mode http",
                    "    log global",
                    "    timeout connect 1s",
                    "    timeout client 30s",
                    "    timeout server 30s",
                    "frontend plain",
                    f"    bind 127.0.0.1:{self.port}",
                    *(f"    {line}" for line in role_request_logging()),
                    f"    default_backend {registry.HAPROXY_BACKEND}",
                    f"backend {registry.HAPROXY_BACKEND}",
                    f"    server worker1 127.0.0.1:{self.envoy.port} check port {check_port} "
                    "inter 200ms fall 1 rise 1",
                    "",
                ]
            )
        )
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port("127.0.0.1", self.port)
        self.collected = tmp / "haproxy-lb1.jsonl"
        self.collector = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runbook.collectors.haproxy",
                f"--socket={tmp}/admin.sock",
                f"--syslog={syslog}",
                "--lb=lb1",
                "--seconds=120",
                f"--out={self.collected}",
            ],
            stdout=subprocess.PIPE,
        )
        assert self.collector.stdout is not None and self.collector.stdout.readline()
        time.sleep(0.8)  # HAProxy's first checks

    def request(self, path: str, rid: str) -> dict:
        started = now_ms()
        try:
            status, _, _ = http(
                "GET",
                f"http://127.0.0.1:{self.port}{path}",
                headers={registry.REQUEST_ID_HEADER: rid},
                timeout=20,
            )
            error = None if status < 400 else ("5xx" if status >= 500 else "4xx")
        except OSError:
            status, error = None, "reset"
        return {
            "request_id": rid,
            "class": "sleep",
            "start_ms": started,
            "end_ms": now_ms(),
            "status": status,
            "error": error,
        }

    def events(self) -> list[dict]:
        time.sleep(0.5)  # the last syslog datagram, Envoy's access-log flush
        self.collector.send_signal(signal.SIGTERM)
        self.collector.wait(5)
        self.haproxy.terminate()
        self.haproxy.wait(5)
        out = read_jsonl(self.collected)
        for proc, pod in ((self.envoy, "gw-w1"), (self.backend, "b-1")):
            for line in proc.log().splitlines():
                if (e := event_from_line(pod, proc.name, line)) is not None:
                    out.append(e)
        return sorted(out, key=lambda e: e["ts_ms"])


def explained(chain: Chain, record: dict) -> dict:
    term = {"ms": record["start_ms"] - 1, "pod": "gw-w1", "node": "worker1", "lb": "lb1"}
    (joined,), _ = account([record], chain.events(), term)
    return joined


def kill_later(proc: Proc, sig: signal.Signals, after_s: float) -> threading.Timer:
    timer = threading.Timer(after_s, proc.popen.send_signal, args=(sig,))
    timer.start()
    return timer


def test_no_server_left_is_haproxy_503_with_no_server(procs: Procs, tmp_path: Path) -> None:
    chain = Chain(procs, tmp_path, {}, check=False)
    joined = explained(chain, chain.request("/", "case-nosrv"))
    assert joined["error"] == "5xx" and joined["rule"] == "lb_no_server", joined
    assert joined["missing_hops"] == []  # only HAProxy was expected to log it


def test_a_backend_killed_mid_request_is_an_envoy_upstream_failure(
    procs: Procs, tmp_path: Path
) -> None:
    chain = Chain(procs, tmp_path, {}, check=True)
    timer = kill_later(chain.backend, signal.SIGKILL, 1.0)
    joined = explained(chain, chain.request("/sleep?seconds=5", "case-uc"))
    timer.join()
    assert joined["error"] == "5xx" and joined["rule"] == "gateway_upstream_failure", joined
    assert "UC" in joined["envoy"]["response_flags"]
    assert joined["missing_hops"] == ["backend"]  # SIGKILLed before its line was written


def test_a_backend_deadline_cut_is_named_from_the_backend_line(
    procs: Procs, tmp_path: Path
) -> None:
    chain = Chain(procs, tmp_path, {"SHUTDOWN_TIMEOUT": "1"}, check=True)
    timer = kill_later(chain.backend, signal.SIGTERM, 0.5)
    joined = explained(chain, chain.request("/sleep?seconds=8", "case-deadline"))
    timer.join()
    assert joined["error"] == "5xx" and joined["rule"] == "backend_cut_at_shutdown", joined
    assert joined["backend"]["msg"] == "cancelled_at_shutdown_timeout"
    assert joined["served_by"] == {
        "lb_server": "worker1",
        "node": "worker1",
        "gateway_pod": "gw-w1",
        "backend_pod": "b-1",
    }
