"""runbook.artifacts.journal: every journal follows its JSON schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runbook.artifacts.journal import SCHEMA_PATH, Journal


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
