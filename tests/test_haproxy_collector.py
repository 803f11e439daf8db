"""runbook.collectors.haproxy: HAProxy's per-request log lines, as the collector reads them,
and how it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT

TS = "2026-11-22T10:00:00.250Z"
TS_MS = 1795341600250.0


def test_the_collector_reads_haproxy_request_lines() -> None:
    from runbook.collectors import haproxy as haproxy_collector

    line = (
        "<134>Nov 22 14:00:00 haproxy[1]: igw_request rid=ab-000001 srv=worker1 st=502 "
        "term=DH Tq=1 Tw=0 Tc=0 Tr=-1 Ta=2855 bytes=0 retries=0"
    )
    fields = haproxy_collector.request_fields(line)
    assert fields is not None and fields["rid"] == "ab-000001" and fields["term"] == "DH"
    assert haproxy_collector.request_fields("Health check for server x/y failed") is None
    empty = haproxy_collector.request_fields("igw_request rid=- srv=<NOSRV> st=503")
    assert empty is not None and empty["rid"] == ""


def test_a_stop_that_races_the_collector_s_own_end_is_not_a_failure(tmp_path: Path) -> None:
    """The homelab's fetch stops the collector with SIGTERM, which can arrive as it ends
    on its own (its bound reached, or a first SIGTERM already taken). Python puts the
    default action back while it exits: a signal then killed the finished collector
    (exit -15) and Ansible's async_status failed the run. SIGTERMs until it is gone."""
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook.collectors.haproxy",
            f"--socket={tmp_path / 'no-haproxy.sock'}",
            "--lb=worker9",
            "--seconds=30",
            f"--out={out}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "collecting\n"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.0005)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_text()  # what it wrote is kept (its runtime API errors)
