"""runbook.analysis.comparison: verdicts over the valid runs only, every failure counted,
how sure each one is; and where `make experiment`'s time went."""

from __future__ import annotations

import pytest

from runbook.analysis.comparison import (
    VERDICT_KINDS,
    compare,
    comparison_doc,
    invalid_runs,
    timing_line,
    timing_summary,
    verdict_cell,
    verdict_matrix,
)


def run(
    lost: int = 0,
    exposed: int = 4,
    failed_total: int | None = None,
    causes: dict[str, int] | None = None,
    valid: bool = True,
) -> dict:
    """One run's summary, as far as the comparison reads it."""
    exposure = {
        "sleep": {"exposed": exposed, "lost": lost, "tested": exposed > 0},
        "stream": {"exposed": 1, "lost": 0, "tested": True},
        "short": {"exposed": 0, "lost": 0, "tested": False},
    }
    return {
        "exposure": exposure,
        "lost_exposed": lost,
        "causes": causes or ({"lb_killed_session_at_down": lost} if lost else {}),
        "failed_total": lost if failed_total is None else failed_total,
        "valid": valid,
        "invalid_reasons": [] if valid else ["worker2 (a survivor) marked DOWN at +0.56 s"],
        "run_dir": "artifacts/x",
    }


def test_only_valid_runs_count_and_invalid_ones_are_listed() -> None:
    doc = compare({"ordered": [run(), run(), run(lost=40, valid=False), run()]})
    m = doc["modes"]["ordered"]
    assert (m["runs"], m["valid_runs"], m["exposed_total"], m["lost_total"]) == (4, 3, 15, 0)
    assert m["invalid_runs"] == [
        {"run": "artifacts/x", "reasons": ["worker2 (a survivor) marked DOWN at +0.56 s"]}
    ]
    assert m["failed_all"] == 0 and m["held_in"] == 3
    # 0 of 15: the exact one-sided bound 1 - 0.05^(1/15)
    assert m["loss_rate_upper_95"] == pytest.approx(0.181, abs=5e-4)
    assert m["verdict"] == (
        "0 lost: 0 of 15 exposed requests over 3 valid runs of 4; loss rate below 18.10% "
        "at 95%; no failure in 3 of 3"
    )


def test_a_failure_nothing_exposed_still_counts() -> None:
    """'0 lost' means no request failed: a failed request that was not on the victim is
    in the verdict beside the exposed ones."""
    m = compare({"improved": [run(failed_total=1), run()]})["modes"]["improved"]
    assert m["failed_all"] == 1 and m["held_in"] == 1
    assert m["verdict"].startswith("0 exposed lost, 1 failed in all: 0 of 10 exposed")


def test_losses_get_their_rate_and_wilson_interval() -> None:
    m = compare({"current": [run(lost=2, failed_total=3), run()]})["modes"]["current"]
    assert (m["lost_total"], m["exposed_total"], m["failed_all"]) == (2, 10, 3)
    assert m["loss_rate"] == 0.2
    low, high = m["loss_rate_interval_95"]
    assert low == pytest.approx(0.0567, abs=5e-4) and high == pytest.approx(0.5098, abs=5e-4)
    assert m["verdict"] == (
        "2 of 10 exposed lost, 3 failed in all, over 2 valid runs of 2; loss rate 20.00% "
        "(5.67%-50.98% at 95%); no failure in 1 of 2; causes: lb_killed_session_at_down x2"
    )


def test_no_valid_run_is_no_verdict() -> None:
    m = compare({"current": [run(valid=False)]})["modes"]["current"]
    assert m["valid_runs"] == 0 and m["loss_rate"] is None
    assert m["verdict"] == "no valid run: 1 run(s), all invalid (see invalid_runs)"
    assert compare({"current": []})["modes"]["current"]["verdict"] == "no run completed"


def test_the_timing_summary_sets_wall_time_against_labs_and_runs() -> None:
    t = timing_summary(
        125.04,
        {"current/steady": (100.0, [30.0, 31.0, 32.0]), "ordered/steady": (120.0, [35, 36, 30])},
    )
    assert t == {
        "wall_s": 125.0,
        "labs": 2,
        "longest_lab": {"name": "ordered/steady", "s": 120.0},
        "runs": 6,
        "longest_run_s": 36.0,
        "sum_of_runs_s": 194.0,
        "outside_runs_s": {"current/steady": 7.0, "ordered/steady": 19.0},
    }
    line = timing_line(t)
    assert "longest lab 120.0s (ordered/steady)" in line and "together 194.0s" in line
    assert "7.0-19.0s" in line
    # a cluster's "labs" are its modes, one after the other
    line = timing_line(t, "onebox")
    assert "for 2 modes one after the other on onebox" in line and "labs" not in line


def test_the_timing_summary_of_labs_whose_runs_all_failed() -> None:
    # a lab whose runs never completed: all its time is outside runs, no longest run
    t = timing_summary(30.0, {"current/inflight": (20.0, [])})
    assert (t["runs"], t["longest_run_s"], t["outside_runs_s"]) == (
        0,
        None,
        {"current/inflight": 20.0},
    )
    assert timing_summary(1.0, {}) == {"wall_s": 1.0, "labs": 0}
    assert timing_line(timing_summary(1.0, {})) == "wall time: 1.0s (no lab ran)"


def test_the_matrix_cell_of_a_verdict_with_no_failure_is_held_with_its_bound() -> None:
    cell = verdict_cell(compare({"ordered": [run(), run(), run()]})["modes"]["ordered"])
    assert (cell.kind, cell.colour) == ("held", VERDICT_KINDS["held"])
    assert cell.head == "0 / 15 lost"
    assert cell.detail == "3 valid of 3 runs; below 18.10% at 95%"


def test_the_matrix_cell_of_failures_nothing_exposed_is_not_held() -> None:
    m = compare({"improved": [run(failed_total=2), run()]})["modes"]["improved"]
    cell = verdict_cell(m)
    assert cell.kind == "unexposed" and cell.detail.endswith("; 2 failed in all")


def test_the_matrix_cell_of_losses_gives_the_rate_and_its_interval() -> None:
    cell = verdict_cell(compare({"current": [run(lost=2, failed_total=3)]})["modes"]["current"])
    assert (cell.kind, cell.head) == ("lost", "2 / 5 lost")
    assert cell.detail == "1 valid of 1 runs; 40.00% (11.76%-76.93% at 95%); 3 failed in all"


def test_the_matrix_cell_of_an_incomplete_or_empty_verdict() -> None:
    short = compare({"ordered": [run(), run(valid=False)]}, valid_runs_asked=2)
    assert verdict_cell(short["modes"]["ordered"]).kind == "incomplete"
    none = verdict_cell(compare({"ordered": [run(valid=False)]})["modes"]["ordered"])
    assert (none.kind, none.head, none.detail) == ("none", "no valid run", "1 run(s), all invalid")


def test_the_matrix_has_modes_as_rows_and_scenarios_as_columns() -> None:
    scenarios = {
        "inflight": compare({"ordered": [run()], "current": [run(lost=1)]}),
        "steady": compare({"current": [run(lost=1)]}),
    }
    rows = verdict_matrix(scenarios, ["current", "ordered"])
    assert [mode for mode, _ in rows] == ["current", "ordered"]
    current, ordered = (cells for _, cells in rows)
    assert [c.kind for c in current if c] == ["lost", "lost"]
    assert ordered[0] is not None and ordered[0].kind == "held" and ordered[1] is None


def test_the_comparison_document_says_how_many_labs_shared_the_machine() -> None:
    doc = comparison_doc(
        {"steady": {"ordered": [run(), run()]}},
        repeats=2,
        profile="quick",
        labs_at_once=4,
        cpus=2,
    )
    assert (doc["labs_at_once"], doc["cpus"], doc["repeats"]) == (4, 2, 2)
    assert doc["run_dirs"] == {"steady": {"ordered": ["artifacts/x", "artifacts/x"]}}
    assert doc["scenarios"]["steady"]["modes"]["ordered"]["complete"]
    assert "timing" not in doc


def test_invalid_runs_are_listed_with_their_mode_and_scenario() -> None:
    scenarios = {
        "inflight": compare({"ordered": [run(), run(valid=False)], "current": [run()]}),
        "steady": compare({"current": [run(valid=False)]}),
    }
    assert [(mode, sc) for mode, sc, _ in invalid_runs(scenarios)] == [
        ("ordered", "inflight"),
        ("current", "steady"),
    ]
    assert invalid_runs(scenarios)[0][2]["reasons"] == [
        "worker2 (a survivor) marked DOWN at +0.56 s"
    ]


def test_what_the_client_retry_hid_is_summed_over_the_valid_runs() -> None:
    def retried(first: int, again: int, valid: bool = True) -> dict:
        return run(valid=valid) | {
            "client_retry": {
                "policy": "once",
                "first_attempts_failed": {"short": first},
                "failed_after_retry": {"short": again} if again else {},
                "first_attempt_causes": {"lb_killed_session_at_down": first},
            }
        }

    doc = compare({"istio-native": [retried(7, 0), retried(5, 1), retried(40, 9, valid=False)]})
    m = doc["modes"]["istio-native"]
    assert m["client_retry"] == {"first_attempts_failed": 12, "failed_after_retry": 1}
    assert "client retry once: 12 first attempts failed, 1 after one retry" in m["verdict"]
    assert compare({"ordered": [run()]})["modes"]["ordered"]["client_retry"] is None
