"""The converge ran one improved-mode experiment: check its answer and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

RUNS = sorted(Path("/tmp/molecule-lab/artifacts").glob("*-inflight-improved"))


def test_one_run_with_every_artifact() -> None:
    assert len(RUNS) == 1
    names = {p.name for p in RUNS[0].iterdir()}
    assert {
        "requests.jsonl",
        "events.jsonl",
        "journal.json",
        "summary.json",
        "report.html",
    } <= names


def test_improved_cut_no_in_flight_request() -> None:
    summary = json.loads((RUNS[0] / "summary.json").read_text())
    assert summary["mode"] == "improved" and summary["profile"] == "quick"
    assert summary["in_flight_at_termination"] >= 4
    assert summary["cut_in_flight"] == 0


def test_haproxy_was_stopped(host) -> None:
    assert not host.socket("tcp://127.200.0.100:8443").is_listening
    assert not Path("/tmp/molecule-lab/lab/170/haproxy.pid").exists()
