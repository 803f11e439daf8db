"""The h2 scenario on the local lab, end to end: HAProxy speaking HTTP/2 to the real
Envoys (`proto h2`), h2_short's streams sharing one HTTP/2 connection to HAProxy,
grpc_stream's calls on one gRPC channel through it to the backend's Ticker, every
request with its record and every hop's line, and `ordered` losing none."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from helpers import make_experiment

pytestmark = pytest.mark.e2e


def test_ordered_loses_none_with_http2_at_both_of_haproxy_s_sides(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = make_experiment(
        artifacts, "--modes=ordered", "--scenarios=h2", "--first-lab-index=175"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = artifacts.glob("*-h2-ordered")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["valid"], summary["invalid_reasons"]
    records = [json.loads(line) for line in (run / "requests.jsonl").open()]
    # what each hop spoke, per class: the client to HAProxy (hv), HAProxy to the
    # gateway (bh, and Envoy's own word)
    spoken = Counter(
        (r["class"], r["haproxy"]["hv"], r["haproxy"]["bh"], r["envoy"]["protocol"])
        for r in records
    )
    assert set(spoken) == {
        ("h2_short", "HTTP/2.0", "2", "HTTP/2"),
        ("grpc_stream", "HTTP/2.0", "2", "HTTP/2"),
        *((c, "HTTP/1.1", "2", "HTTP/2") for c in ("short", "short_pooled", "sleep", "stream")),
        # WebSockets stay HTTP/1.1 to the gateway (ws h1)
        ("ws", "HTTP/1.1", "1", "HTTP/1.1"),
    }, spoken
    ids = {r["request_id"] for r in records}
    assert len(ids) == len(records)
    assert summary["missing_hops"] == {} and summary["resent_by_client"] == {}
    assert sum(r["resent_by_stack"] for r in records) == 0
    assert summary["exposure"]["h2_short"]["exposed"] > 0
    # every gRPC call whole: all its messages, status OK, its backend line the ticker's
    calls = [r for r in records if r["class"] == "grpc_stream"]
    assert calls and all(
        r["grpc_status"] == "OK" and r["chunks"] == r["expected_chunks"] for r in calls
    )
    assert summary["exposure"]["grpc_stream"]["exposed"] > 0
    assert summary["failed_total"] == 0, summary["causes"]
