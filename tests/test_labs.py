"""Two labs' comparisons side by side (runbook.analysis.labs), and `make experiment`'s
targets (runbook.runners.targets): case by case, on hand-made comparison documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_comparison import run

from runbook.analysis.comparison import comparison_doc
from runbook.analysis.labs import (
    answer,
    latest_comparison,
    side_by_side,
    timing_apart,
    write_side_by_side,
)
from runbook.runners import targets

ROOT = Path(__file__).resolve().parents[1]


def doc(lab: str | None, by_mode: dict[str, list[dict]]) -> dict:
    return comparison_doc({"inflight": by_mode}, 1, "quick", 1, 2, lab=lab)


def test_the_same_answer_in_both_labs_is_agreement() -> None:
    both = side_by_side(
        doc("local", {"ordered": [run()], "current": [run(lost=2)]}),
        doc("onebox", {"ordered": [run()], "current": [run(lost=3)]}),
    )
    assert both["labs"] == ["local", "onebox"]
    rows = both["scenarios"]["inflight"]
    assert list(rows) == ["current", "ordered"]  # the registry's order
    assert rows["ordered"]["same_answer"] and rows["current"]["same_answer"]
    assert rows["ordered"]["differences"] == [] and both["agree"] == "2 of 2"
    assert rows["current"]["onebox"]["head"] == "3 / 5 lost"


def test_a_different_answer_a_cause_of_one_lab_and_far_timings_are_named() -> None:
    local, onebox = run(exposed=300), run(lost=30, exposed=300)
    local["timings_s"] = {"termination_to_lb_down": 0.3, "termination_to_pod_gone": 16.0}
    onebox["timings_s"] = {"termination_to_lb_down": 9.0, "termination_to_pod_gone": 16.4}
    row = side_by_side(doc("local", {"improved": [local]}), doc("onebox", {"improved": [onebox]}))[
        "scenarios"
    ]["inflight"]["improved"]
    assert not row["same_answer"]
    assert row["differences"] == [
        "local: keeps (0 / 301 lost); onebox: loses (30 / 301 lost)",
        "requests failed in all: 0 on local, 30 on onebox",
        "cause lb_killed_session_at_down only on onebox (x30)",
        "to LB out: 0.3 s on local, 9.0 s on onebox",
    ]


def test_a_rare_loss_in_one_lab_within_the_other_s_bound_is_not_a_different_answer() -> None:
    # the improved/inflight cell of 2026-12-03: local 1 of 287 lost, onebox 0 of 292;
    # onebox's runs allow up to ~1%, local's interval starts near 0.06%
    local, onebox = run(lost=1, exposed=286), run(exposed=291)
    row = side_by_side(doc("local", {"improved": [local]}), doc("onebox", {"improved": [onebox]}))[
        "scenarios"
    ]["inflight"]["improved"]
    assert row["agreement"] == "within bounds" and row["same_answer"]
    assert row["differences"][0].startswith(
        "local: loses (1 / 287 lost); onebox: keeps (0 / 292 lost); within each other's "
        "bounds at 95% (local 0."
    )
    assert "onebox below 1.0" in row["differences"][0]


def test_a_mode_one_lab_did_not_run_is_shown_not_compared() -> None:
    row = side_by_side(doc("local", {"ordered": [run()]}), doc("onebox", {}))["scenarios"][
        "inflight"
    ]["ordered"]
    assert row["onebox"] is None and not row["same_answer"] and row["differences"] == []


@pytest.mark.parametrize(
    ("a", "b", "apart"),
    [
        (0.3, 0.5, False),
        (16.0, 17.2, False),
        (0.3, 9.0, True),
        (None, 1.0, True),
        (None, None, False),
    ],
)
def test_timings_apart_beyond_the_timers_noise(
    a: float | None, b: float | None, apart: bool
) -> None:
    assert timing_apart(a, b) is apart


def test_an_answer_in_a_word() -> None:
    entry = doc("local", {"ordered": [run()]})["scenarios"]["inflight"]["modes"]["ordered"]
    assert answer(entry) == "keeps" and answer(None) == "not run"
    assert answer({**entry, "valid_runs": 0}) == "no valid run"
    assert answer({**entry, "exposed_total": 0}) == "not tested"


def test_the_page_and_its_data_are_written_once_from_the_newest_local_comparison(
    tmp_path: Path,
) -> None:
    old = {k: v for k, v in doc(None, {"ordered": [run()]}).items() if k != "lab"}
    (tmp_path / "comparison-20261201T000000Z.json").write_text(json.dumps(old))
    (tmp_path / "comparison-20261202T000000Z.json").write_text(json.dumps(doc("onebox", {})))
    local = latest_comparison(tmp_path, "local")
    assert local is not None and local.name == "comparison-20261201T000000Z.json"
    onebox = latest_comparison(tmp_path, "onebox")
    assert onebox is not None
    page = write_side_by_side(local, onebox, tmp_path / "labs-x.html")
    assert "Same answer in 0 of 1" in page.read_text()
    # what the labs cannot share, and what varies in both, both said
    assert "What varies from run to run in both labs" in page.read_text()
    assert "There are still 1 active connections" in page.read_text()
    assert json.loads(page.with_suffix(".json").read_text())["labs"] == ["local", "onebox"]
    with pytest.raises(FileExistsError):
        write_side_by_side(local, onebox, page)


def test_a_target_is_an_inventory_and_a_cluster_s_profile_is_its_own() -> None:
    onebox = targets.target_for("onebox", ROOT)
    assert onebox.is_cluster and onebox.profile == "quick"
    local = targets.target_for("local", ROOT)
    assert not local.is_cluster
    with pytest.raises(
        ValueError, match=r"--target 'nowhere' is not one of: homelab, local, onebox"
    ):
        targets.target_for("nowhere", ROOT)


def test_a_cluster_mode_shows_its_plays_runs_and_failures() -> None:
    onebox = targets.target_for("onebox", ROOT)
    console = targets.Console(onebox)
    output = [
        "PLAY [Run the experiment on the local lab] *****",
        "skipping: [localhost]",
        "PLAY [Run each run asked, the controller and the workers in step] *****",
        "TASK [Place a gateway pod on each worker, then start run 1 of 2 (inflight)] *****",
        "skipping: [localhost]",
        "TASK [Create the run directory] *****",
        "ok: [localhost]",
        "ok: [localhost]",
        "TASK [Place a gateway pod on each worker, then start run 2 of 2 (steady)] *****",
        "fatal: [worker1]: FAILED! => {}",
    ]
    shown = [s for line in output for s in console.shown(line)]
    # a play whose every task was skipped (the other target's) is not shown
    assert shown == [
        "Run each run asked, the controller and the workers in step",
        "run 1 of 2 (inflight)",
        "run 2 of 2 (steady)",
        "fatal: [worker1]: FAILED! => {}",
    ]
    assert [targets.run_started(line) for line in output[2:4]] == [None, 1]
    local = targets.Console(targets.target_for("local", ROOT))
    assert local.shown("[  1.2s] load") == ["[  1.2s] load"] and local.shown("x") == []
    assert targets.run_args("steady", Path("/r.json")) == [
        "--scenario=steady",
        "--result-file=/r.json",
    ]
    assert targets.cluster_runs_args(
        [("steady", Path("/r.json")), ("inflight@drain", Path("/s"))]
    ) == [
        "-e",
        '{"experiment_runs": [{"scenario": "steady", "event": "delete", "result_file": "/r.json"}, '
        '{"scenario": "inflight", "event": "drain", "result_file": "/s"}]}',
    ]
