"""The busy scenario on the local lab, end to end: vegeta's thousand requests a second
through the real HAProxy and Envoy beside the driver's own classes, every one with its
record and every hop's line, and `ordered` losing none of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_experiment

pytestmark = pytest.mark.e2e


def test_ordered_loses_none_of_ten_thousand_requests_a_run(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = make_experiment(
        artifacts, "--modes=ordered", "--scenarios=busy", "--first-lab-index=174"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = artifacts.glob("*-busy-ordered")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["valid"], summary["invalid_reasons"]
    records = [json.loads(line) for line in (run / "requests.jsonl").open()]
    pooled = [r for r in records if r["class"] == "short_pooled"]
    assert len(pooled) >= 10_000
    # one record per request sent, each joined across every hop, none sent twice
    ids = {r["request_id"] for r in records}
    assert len(ids) == len(records)
    (haproxy,) = (run / "collected").glob("haproxy-*.jsonl")
    logged = [
        e["rid"]
        for e in map(json.loads, haproxy.open())
        if e["kind"] == "request_log" and e.get("rid")
    ]
    assert len(logged) == len(set(logged)) and set(logged) == ids
    assert summary["missing_hops"] == {} and summary["resent_by_client"] == {}
    assert not summary["rates"]["short_pooled"]["shortfall"], summary["rates"]
    assert summary["exposure"]["short_pooled"]["exposed"] > 100
    assert summary["failed_total"] == 0, summary["causes"]
    assert "loss rate below" in result.stdout
