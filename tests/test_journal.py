"""runbook.artifacts.journal: every journal follows its JSON schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runbook.analysis.finalize import finalize
from runbook.artifacts.events import CollectedDir, now_ms
from runbook.artifacts.journal import SCHEMA_PATH, Journal
from runbook.model.plan import plan


@pytest.mark.parametrize("status", ["completed", "failed", "interrupted"])
def test_the_journal_follows_its_schema(status: str) -> None:
    journal = Journal("improved", "inflight", "quick", "local")
    journal.step("bring-up-lab", journal.start_ms, output={"pods": ["a"]})
    summary = None if status == "interrupted" else {"cut_in_flight": 0}
    doc = journal.document(status, summary, None if summary is None else journal.start_ms)
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert doc["hypothesis"]["met"] is (None if summary is None else True)
    with pytest.raises(ValueError, match="'done'"):
        journal.document("done", None, None)


def test_a_homelab_journal_replays_the_runner_s_steps_and_starts_with_them(tmp_path) -> None:
    """The homelab runner and finalize are two processes (two Ansible tasks): the
    runner's steps come through collected/experiment.jsonl, and the journal's duration is
    the run's, not finalize's own."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "requests.raw.jsonl").write_text("")
    started = now_ms() - 90_000  # the runner began 90 s ago
    log = CollectedDir(run_dir).log("experiment")
    log.emit("experiment", "step", started + 10_000, name="start-collectors", start_ms=started)
    log.emit(
        "experiment", "step", started + 80_000, name="finish-load", start_ms=started + 10_000,
        output={"requests": 3},
    )  # fmt: skip
    log.close()
    journal = Journal("ordered", "inflight", "quick", "homelab")
    finalize(run_dir, plan("quick", "ordered"), "interrupted", journal, None)
    doc = json.loads((run_dir / "journal.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert [s["name"] for s in doc["steps"]] == ["start-collectors", "finish-load"]
    assert [s["duration_s"] for s in doc["steps"]] == [10.0, 70.0]
    assert doc["duration_s"] >= 90, doc["duration_s"]
