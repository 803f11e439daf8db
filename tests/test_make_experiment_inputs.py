"""`make experiment`'s inputs (runbook.runners.all): a bad value is refused before anything
starts, naming it and what is allowed; how many labs share the machine by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from runbook.runners.all import (
    FAILED,
    LABS_PER_CPU,
    MAX_REPLACEMENTS,
    NOT_REACHED,
    RAN,
    default_labs_at_once,
    lab_plan,
    runs_fate,
    runs_wanted,
    timing_overrides,
)

MODES = ["current", "improved", "ordered", "istio-native"]


@pytest.mark.parametrize(
    ("pairs", "cpus", "expected"),
    [(8, 2, min(8, 2 * LABS_PER_CPU)), (8, 64, 8), (1, 2, 1), (8, 1, LABS_PER_CPU)],
)
def test_labs_at_once_follow_the_usable_cpus(pairs: int, cpus: int, expected: int) -> None:
    assert default_labs_at_once(pairs, cpus) == expected


@pytest.mark.parametrize(
    ("modes", "scenarios", "slots", "expected"),
    [
        # the default here: four slots, one lab per mode running both scenarios
        (MODES, ["inflight", "steady"], 4, [(m, ("inflight", "steady")) for m in MODES]),
        # slots to spare: a mode's scenarios split between labs of its own
        (
            ["ordered"],
            ["inflight", "steady"],
            4,
            [("ordered", ("inflight",)), ("ordered", ("steady",))],
        ),
        (
            ["current", "ordered"],
            ["inflight", "steady", "busy"],
            4,
            [
                ("current", ("inflight", "busy")),
                ("current", ("steady",)),
                ("ordered", ("inflight", "busy")),
                ("ordered", ("steady",)),
            ],
        ),
        # fewer slots than modes: still one lab each (they wait for a slot)
        (MODES, ["steady"], 2, [(m, ("steady",)) for m in MODES]),
        # more slots than could be used: one lab per mode and scenario, no more
        (
            MODES,
            ["inflight", "steady"],
            8,
            [(m, (sc,)) for m in MODES for sc in ("inflight", "steady")],
        ),
        # three modes, four slots: a fourth lab would leave two modes with one
        (MODES[:3], ["inflight", "steady"], 4, [(m, ("inflight", "steady")) for m in MODES[:3]]),
        # h2 has HAProxy speak HTTP/2 to the gateways: never in a lab with an HTTP/1.1 one
        (
            ["ordered"],
            ["inflight", "h2", "steady"],
            1,
            [("ordered", ("inflight", "steady")), ("ordered", ("h2",))],
        ),
    ],
)
def test_each_mode_converges_as_few_labs_as_its_slots_need(
    modes: list[str], scenarios: list[str], slots: int, expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    plan = lab_plan(modes, scenarios, slots)
    assert plan == expected
    # every mode and scenario is run, once
    ran = sorted((m, sc) for m, scs in plan for sc in scs)
    assert ran == sorted((m, sc) for m in modes for sc in scenarios)


BOTH = ("inflight", "steady")


@pytest.mark.parametrize(
    ("ran", "settled", "expected"),
    [
        # the first playbook: every scenario's repeats, in order
        (
            {"inflight": 0, "steady": 0},
            {"inflight": 0, "steady": 0},
            [("inflight", 1), ("inflight", 2), ("steady", 1), ("steady", 2)],
        ),
        # one steady run invalid: one more, numbered after it
        ({"inflight": 2, "steady": 2}, {"inflight": 2, "steady": 1}, [("steady", 3)]),
        # every replacement spent: no more, whatever is still unsettled
        ({"inflight": 2, "steady": 2 + MAX_REPLACEMENTS}, {"inflight": 2, "steady": 0}, []),
        # a failure left runs unreached: they come again under their numbers
        (
            {"inflight": 1, "steady": 0},
            {"inflight": 1, "steady": 0},
            [("inflight", 2), ("steady", 1), ("steady", 2)],
        ),
    ],
)
def test_a_cluster_mode_runs_what_is_still_wanted(
    ran: dict[str, int], settled: dict[str, int], expected: list[tuple[str, int]]
) -> None:
    assert runs_wanted(BOTH, 2, ran, settled) == expected


DONE = {"status": "completed", "run_dir": "/r"}
STOPPED = {"status": "running", "run_dir": "/r"}


@pytest.mark.parametrize(
    ("code", "results", "expected"),
    [
        (0, [DONE, DONE], [RAN, RAN]),
        # the second run failed: the third was never reached, the next playbook runs it
        (2, [DONE, STOPPED, None], [RAN, FAILED, NOT_REACHED]),
        # the flip failed before any run started: the failure is every run's
        (2, [None, None], [FAILED, FAILED]),
        # every run completed and the playbook failed after: the last one is blamed
        (2, [DONE, DONE], [RAN, FAILED]),
        # a run that started and never wrote its end is not a success, exit 0 or not
        (0, [DONE, STOPPED], [RAN, FAILED]),
    ],
)
def test_each_run_of_a_cluster_playbook_has_one_fate(
    code: int, results: list[dict[str, str] | None], expected: list[str]
) -> None:
    assert runs_fate(code, results) == expected


def test_timing_overrides_are_checked_by_the_model() -> None:
    assert timing_overrides('{"haproxy_check_timeout_s": 0.25}', "quick") == {
        "haproxy_check_timeout_s": 0.25
    }
    assert timing_overrides("{}", "quick") == {}
    with pytest.raises(ValueError, match=r"lb_buffer_exceeds_lb_detection"):
        timing_overrides('{"haproxy_check_timeout_s": 1}', "quick")
    with pytest.raises(ValueError, match=r"must be a JSON object"):
        timing_overrides("[1]", "quick")
    with pytest.raises(ValueError, match=r"is not JSON"):
        timing_overrides("{haproxy", "quick")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--labs-at-once=0"], "--labs-at-once 0 must be 1..2 (the labs asked)"),
        (["--labs-at-once=3"], "--labs-at-once 3 must be 1..2"),
        (["--timing-overrides", '{"bogus": 1}'], "unknown timing input 'bogus'"),
        (
            ["--timing-overrides", '{"vs_timeout_s": 3000000}'],
            "haproxy_timeout_server_s 3000002 (from longest_request_s=30, "
            "backend_grace_margin_s=2, vs_timeout_s=3000000, haproxy_timeout_server_margin_s=2) "
            "is outside what HAProxy's `timeout server`",
        ),
        (["--repeats=0"], "--repeats 0 must be 1..20"),
        (["--modes=seed"], "seed"),
        (
            ["--scenarios=inflight,busy", "--labs-at-once=2"],
            "--labs-at-once 2: scenario busy takes the machine's CPUs alone",
        ),
        (["--client-retry=twice"], "client retry 'twice' is not one of: none, once"),
        (
            ["--scenarios=busy", "--client-retry=once"],
            "client retry 'once' is the load driver's own: scenario 'busy' drives short_pooled",
        ),
        (["--events=evict"], "event 'evict' is not one of: delete, drain, scale-down, rollout"),
        (["--events="], "--events names no event"),
        # the local lab's stand-ins model a deletion only: each other event refused,
        # naming what the lab lacks
        (
            ["--events=delete,drain"],
            "event 'drain' cannot run on the local lab: the local lab has no API server: "
            "no cordon, no Eviction API",
        ),
        (["--events=scale-down"], "no ReplicaSet controller"),
        (["--events=rollout"], "no Deployment controller or scheduler"),
    ],
)
def test_a_bad_input_is_refused_before_anything_starts(
    tmp_path: Path, args: list[str], says: str
) -> None:
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.runners.all",
            "--modes=current,ordered",
            "--scenarios=inflight",
            "--first-lab-index=190",
            f"--artifacts={artifacts}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    assert not artifacts.exists() and not (ROOT / ".lab" / "190").exists()


@pytest.mark.parametrize(
    ("given", "says"),
    [
        # a value is one argument: nothing in it reaches a shell or make's functions
        (["MODES=current;touch {marker}"], "mode 'current;touch {marker}' is not one of"),
        (["MODES=$(shell touch {marker})"], "mode '$(shell touch {marker})' is not one of"),
        (["MODES=current`touch {marker}`"], "is not one of"),
        # given empty is refused, not taken for "all"
        (["MODES="], "--modes names no mode"),
        (["modes="], "--modes names no mode"),
        # the rest behind a bogus mode too: if one were let through, nothing would start
        (["MODES=bogus", "SCENARIOS="], "--scenarios names no scenario"),
        (["MODES=bogus", "REPEATS="], "argument --repeats: invalid int value: ''"),
        (["MODES=bogus", "ARTIFACTS="], "--artifacts is empty"),
        (["MODES=bogus", "FIRST_LAB="], "argument --first-lab-index: invalid int value: ''"),
        (["MODES=bogus", "LABS_AT_ONCE="], "argument --labs-at-once: invalid int value: ''"),
        (["MODES=bogus", "RETRY="], "client retry '' is not one of: none, once"),
        (["MODES=bogus", "retry=twice"], "client retry 'twice' is not one of"),
    ],
)
def test_make_experiment_passes_each_value_as_typed(
    tmp_path: Path, given: list[str], says: str
) -> None:
    """The Makefile hands each variable to the runner as one argument, only when given."""
    marker = tmp_path / "ran"
    result = subprocess.run(
        ["make", "--no-print-directory", "experiment", *(g.format(marker=marker) for g in given)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr
    assert says.format(marker=marker) in result.stderr, result.stderr
    assert not marker.exists()
