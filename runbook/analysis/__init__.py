"""Analysis: from a run directory's requests.jsonl, events.jsonl and plan.json to
summary.json, journal.json and report.html, and the comparison across runs. The same
step for both targets (`finalize`)."""
