"""A client that retries, end to end on the local lab: `--client-retry once` reaches the
runner through run-experiment.yml, the driver sends a failed request once more under
its own id, and the accounting joins each attempt with its own hops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_experiment

pytestmark = pytest.mark.e2e


def test_current_s_first_attempts_fail_and_their_retries_are_accounted(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = make_experiment(
        artifacts,
        "--modes=current",
        "--scenarios=steady",
        "--client-retry=once",
        "--first-lab-index=173",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = artifacts.glob("*-steady-current")
    plan = json.loads((run / "plan.json").read_text())
    assert plan["load"]["client_retry"] == "once"
    summary = json.loads((run / "summary.json").read_text())
    retry = summary["client_retry"]
    assert retry is not None and retry["policy"] == "once"
    records = [json.loads(line) for line in (run / "requests.jsonl").open()]
    retried = [r for r in records if r.get("first_attempt")]
    assert sum(retry["first_attempts_failed"].values()) == len(retried)
    for r in retried:
        first = r["first_attempt"]
        # one request: the retry under its own id, each attempt joined with its own hops
        assert r["request_id"] == first["request_id"] + ".2"
        assert first["error"] in ("refused", "reset") or first["status"] in (502, 503, 504)
        assert "cause" in first and first["rule"] != "unexplained", first
        assert r["start_ms"] == first["start_ms"]
    # every failure a retry would send again was sent again (its final attempt failing
    # too), whatever this run's deletion happened to cut
    for r in records:
        again = r["error"] in ("refused", "reset") or r["status"] in (502, 503, 504)
        if r["class"] != "ws" and again:
            assert r.get("first_attempt"), r
    # no id is both a record and a first attempt: a retry is never a new request
    ids = {r["request_id"] for r in records}
    assert not ids & {r["first_attempt"]["request_id"] for r in retried}
    assert "client retry once:" in result.stdout
