"""A short end-to-end run of every mode in both scenarios on the local lab, through the
real playbook.

Real HAProxy (provisioned by the haproxy role), real Envoy, hc, backend and drain
script; four labs (one per mode, each running both scenarios), a few minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest

from helpers import ROOT, VENV_BIN, pixels_of, screenshot
from runbook.analysis.comparison import VERDICT_KINDS, verdict_cell
from runbook.artifacts.events import read_jsonl
from runbook.artifacts.journal import SCHEMA_PATH
from runbook.artifacts.rundir import new_run_dir
from runbook.model import registry, timing

SUMMARY_KEYS = {
    "mode",
    "scenario",
    "profile",
    "classes",
    "in_flight_at_termination",
    "cut_in_flight",
    "failed_total",
    "timings_s",
}


pytestmark = pytest.mark.e2e


class Runs(NamedTuple):
    """One `make experiment` (every mode in both scenarios, one repeat)."""

    stdout: str
    #: mode -> its inflight run directory
    inflight: dict[str, Path]
    comparison: dict[str, Any]
    #: mode -> its steady run directory
    steady: dict[str, Path]
    #: the comparison page
    page: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.runners.all",
            "--first-lab-index",
            "180",
            "--repeats",
            "1",
            "--artifacts",
            str(artifacts),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # run directories are <stamp>-<scenario>-<mode>; a mode may hold a hyphen. An
    # invalid run has had another take its place: the valid one is the pair's run
    named: dict[tuple[str, ...], Path] = {}
    for d in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        if json.loads((d / "summary.json").read_text())["valid"]:
            named[tuple(d.name.split("-", 2)[1:])] = d
    dirs = {mode: d for (scenario, mode), d in named.items() if scenario == "inflight"}
    steady = {mode: d for (scenario, mode), d in named.items() if scenario == "steady"}
    assert set(dirs) == set(steady) == set(registry.MODES)
    (comparison,) = artifacts.glob("comparison-*.json")
    return Runs(
        result.stdout,
        dirs,
        json.loads(comparison.read_text()),
        steady,
        comparison.with_suffix(".html"),
    )


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_current_cuts_in_flight_and_improved_cuts_none(runs: Runs) -> None:
    dirs = runs.inflight
    current, improved = summary(dirs["current"]), summary(dirs["improved"])
    assert current["in_flight_at_termination"] >= 4
    assert current["cut_in_flight"] >= 1  # shutdown-sessions at the LB's DOWN
    assert current["timings_s"]["termination_to_lb_down"] < 3  # fall x inter, quick profile
    assert improved["in_flight_at_termination"] >= 4
    assert improved["cut_in_flight"] == 0
    # improved flips the LB only after its in-flight requests ended
    assert (
        improved["timings_s"]["termination_to_lb_down"]
        > improved["timings_s"]["last_in_flight_end"]
    )


def test_every_loss_is_explained_and_exposure_is_counted(runs: Runs) -> None:
    dirs, comparison = runs.inflight, runs.comparison
    current, improved = summary(dirs["current"]), summary(dirs["improved"])
    for s in (current, improved):
        # enough long requests land on the terminating gateway to test both classes
        assert s["exposure"]["sleep"]["exposed"] >= 2, s["exposure"]
        assert s["exposure"]["stream"]["exposed"] >= 1, s["exposure"]
        assert s["missing_hops"] == {}, s["missing_hops"]  # every hop joined
    # improved carries every long request through; the one loss the seed's order still
    # allows here is a short request in flight at the very instant of its DOWN (it sends
    # new traffic until then), now that a short sent during the drain counts as exposed
    assert improved["exposure"]["sleep"]["lost"] == improved["exposure"]["stream"]["lost"] == 0
    for f in improved["failed"]:
        assert f["class"] == "short" and f["rule"] == "lb_killed_session_at_down", f
        assert f["phase"] in ("lb_detection", "after_lb_down"), f
    assert current["lost_exposed"] >= 1
    for f in current["failed"]:
        # shutdown-sessions at the LB's DOWN, seen in HAProxy's termination state
        assert f["rule"] == "lb_killed_session_at_down", f
        # the kill and the DOWN are one instant; the two clocks that see them (the
        # client, the syslog collector) are a few ms apart
        assert f["phase"] in ("lb_detection", "after_lb_down"), f
        assert f["served_by"]["gateway_pod"] == current["terminated_pod"]
    # HAProxy sits on worker1 (the inventory's `source`), as the homelab's: the victim
    # is worker2's gateway, and requests HAProxy sends to worker1 reach it through
    # worker1's NodePort (kube-proxy routes a node's own traffic cluster-wide), never
    # the other way round (worker2's NodePort keeps an outside source node-local)
    every_run = [summary(d) for d in [*dirs.values(), *runs.steady.values()]]
    assert {s["terminated_pod"].rsplit("-", 1)[1] for s in every_run} == {"worker2"}
    served_off = [s["served_off_lb_server"] for s in every_run]
    assert all(set(off) <= {"worker1 -> worker2"} for off in served_off), served_off
    assert sum(off.get("worker1 -> worker2", 0) for off in served_off) > 0, served_off
    joined = read_jsonl(dirs["current"] / "requests.jsonl")
    assert all(r["request_id"] and r["haproxy"] and r["envoy"] for r in joined)
    modes = comparison["scenarios"]["inflight"]["modes"]
    assert modes["improved"]["held_in"] == (improved["failed_total"] == 0)
    assert modes["current"]["held_in"] == 0
    assert modes["current"]["causes"] == {"lb_killed_session_at_down": current["lost_exposed"]}


def test_ordered_loses_nothing_in_either_scenario(runs: Runs) -> None:
    """LB first: no class loses a request, under the seed's load and under steady
    traffic; the LB is out long before zero in flight, and zero before the DOWN."""
    dirs, comparison, steady = runs.inflight, runs.comparison, runs.steady
    for run in (dirs["ordered"], steady["ordered"]):
        s = summary(run)
        assert s["lost_exposed"] == 0 and s["failed_total"] == 0, s["failed"]
        assert s["missing_hops"] == {}, s["missing_hops"]
    s = summary(steady["ordered"])
    for cls in ("sleep", "stream", "ws"):  # the long classes were on the victim
        assert s["exposure"][cls]["tested"], s["exposure"]
    t = s["timings_s"]
    # nothing for ENDPOINT_SYNC_WAIT, then the 404 at the next check: NOLB
    quick = timing.derive("quick")
    sync = quick.inputs["endpoint_sync_s"]
    assert sync <= t["termination_to_lb_down"] < sync + quick.lb_soft_detect_worst_s + 1
    assert t["termination_to_zero_in_flight"] < 12  # before DRAIN_TIMEOUT
    for cls, rate in s["rates"].items():  # the driver offered what the plan said
        assert not rate["shortfall"], (cls, rate)
    for scenario in ("inflight", "steady"):
        ordered = comparison["scenarios"][scenario]["modes"]["ordered"]
        assert (ordered["valid_runs"], ordered["lost_total"], ordered["failed_all"]) == (1, 0, 0)
        assert ordered["complete"] and ordered["loss_rate_upper_95"] > 0
        assert ordered["verdict"].startswith(f"0 lost: 0 of {ordered['exposed_total']} exposed")


def test_steady_traffic_defeats_the_seed_order_and_istio_s_own_drain(runs: Runs) -> None:
    """improved: new requests keep the gauge above zero, the poll runs to DRAIN_TIMEOUT
    and the DOWN cuts what is in flight then. istio-native: readiness fails at SIGTERM,
    so the DOWN comes at once and cuts what is in flight. Each loss has its cause."""
    steady = runs.steady
    improved, native = summary(steady["improved"]), summary(steady["istio-native"])
    assert improved["lost_exposed"] >= 1
    assert improved["timings_s"]["termination_to_lb_down"] > 10  # DRAIN_TIMEOUT 12
    assert native["timings_s"]["termination_to_lb_down"] < 3
    for s in (improved, native):
        assert s["causes"] and "unexplained" not in s["causes"], s["causes"]


def test_artifacts_are_complete(runs: Runs) -> None:
    stdout, dirs, comparison = runs.stdout, runs.inflight, runs.comparison
    assert "comparison report:" in stdout and "wall time:" in stdout
    # where the time went: every completed run counted, each lab's fixed cost apart
    timing = comparison["timing"]
    assert timing["runs"] == sum(len(v) for v in comparison["run_dirs"]["inflight"].values()) + sum(
        len(v) for v in comparison["run_dirs"]["steady"].values()
    )
    assert 0 < timing["longest_run_s"] <= timing["longest_lab"]["s"] <= timing["wall_s"]
    assert all(s > 0 for s in timing["outside_runs_s"].values())
    for mode, run in dirs.items():
        names = {p.name for p in run.iterdir()}
        assert {
            "requests.jsonl",
            "events.jsonl",
            "journal.json",
            "summary.json",
            "report.html",
        } <= names
        s = summary(run)
        assert set(s) >= SUMMARY_KEYS and s["mode"] == mode
        assert set(s["classes"]) == {"sleep", "stream", "short"}
        for c in s["classes"].values():
            assert c["total"] == c["ok"] + c["failed"]
        journal = json.loads((run / "journal.json").read_text())
        jsonschema.validate(journal, json.loads(SCHEMA_PATH.read_text()))
        assert journal["status"] == "completed" and journal["target"] == "local"
        assert journal["hypothesis"]["met"] is (s["cut_in_flight"] == 0)
        # every collector wrote its own file, and events.jsonl is their merge
        collected = {p.name for p in (run / "collected").iterdir()}
        assert {
            "haproxy-lab-haproxy.jsonl",
            "envoy.jsonl",
            "pods.jsonl",
            "kubelet.jsonl",
            "endpointslices.jsonl",
            "experiment.jsonl",
        } <= collected, collected
        assert len(read_jsonl(run / "events.jsonl")) == sum(
            len(read_jsonl(p)) for p in (run / "collected").glob("*.jsonl")
        )
        requests = read_jsonl(run / "requests.jsonl")
        assert len(requests) == sum(c["total"] for c in s["classes"].values())
        assert all("start_offset_ms" in r and "error" in r for r in requests)
        kinds = {(e["source"], e["kind"]) for e in read_jsonl(run / "events.jsonl")}
        has_hc = registry.MODES[mode].probes is not None  # istio-native: no hc, no preStop
        for needed in [
            ("experiment", "termination_issued"),
            *([("kubelet", "prestop_started"), ("hc", "transition")] if has_hc else []),
            ("haproxy", "server_state"),
            ("envoy", "active_requests"),
            ("kubelet", "pod_terminated"),
            ("haproxy", "health_check_log"),
        ]:
            assert needed in kinds, needed
        assert ("prestop", "step") in kinds or mode in ("current", "istio-native")
        page = (run / "report.html").read_text()
        assert "data:image/png;base64," in page and "<script" not in page


def test_run_directories_are_never_reused(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "inflight", "current")
    second = new_run_dir(tmp_path, "inflight", "current")
    assert first != second and first.exists() and second.exists()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["-e", "mode=fast"], "mode=fast must be one of current, improved"),
        (["-e", "mode=current", "-e", "scenario=soak"], "scenario=soak one of inflight"),
        # a list of runs is a cluster's (one flip for several runs): the local lab's
        # runs are make experiment's, each its own runner
        (
            ["-e", "mode=current", "-e", '{"experiment_runs": [{"scenario": "steady"}]}'],
            "and only for a cluster (experiment_target homelab; this one is local",
        ),
        (
            ["-e", "mode=current", "-e", "timing_profile=slow"],
            "timing_profile=slow one of seed, quick",
        ),
        (
            ["-e", "mode=current", "-e", "client_retry=twice"],
            "client_retry=twice one of none, once",
        ),
        (
            ["-e", "mode=current", "-e", "scenario=busy", "-e", "client_retry=once"],
            "client_retry=once is the load driver's own, and scenario(s) busy drive",
        ),
        (["-e", "mode=current", "-e", "event=evict"], "event evict must be one of delete, drain"),
        (
            ["-e", "mode=current", "-e", "event=drain"],
            "event drain cannot run on the local lab: the local lab has no API server",
        ),
        # make experiment's shared render: a folder without the mode's Deployment, and
        # a render that cannot carry the run's timing overrides
        (
            ["-e", "mode=current", "-e", "experiment_manifests={tmp}/nowhere"],
            "experiment_manifests={tmp}/nowhere must be a folder rendered by",
        ),
        (
            [
                "-e",
                "mode=current",
                "-e",
                f"experiment_manifests={ROOT / 'manifests'}",
                "-e",
                '{"timing_overrides": {"drain_timeout_s": 11}}',
            ],
            'cannot carry timing_overrides={"drain_timeout_s": 11}',
        ),
    ],
)
def test_bad_input_is_refused_before_anything_changes(
    tmp_path: Path, extra: list[str], named: str
) -> None:
    artifacts = tmp_path / "artifacts"
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    named = named.replace("{tmp}", str(tmp_path))
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "playbooks/run-experiment.yml",
            *extra,
            "-e",
            "lab_index=177",
            "-e",
            f"experiment_artifacts={artifacts}",
            "-e",
            f"lab_root={tmp_path / 'lab'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert named in " ".join(result.stdout.split()), result.stdout[-2000:]
    assert not artifacts.exists() and not (tmp_path / "lab").exists()


def test_the_comparison_page_opens_with_the_answer(runs: Runs, tmp_path: Path) -> None:
    """The verdict matrix comes first and its colours are in the first screenful, as
    headless Chromium draws it: held (ordered) green, lost (current) red."""
    html = runs.page.read_text()
    assert html.index('id="verdicts"') < html.index("Invalid runs") < html.index("Every run")
    assert f"{runs.comparison['labs_at_once']} labs ran at once" in html
    kinds = {
        verdict_cell(runs.comparison["scenarios"]["inflight"]["modes"][m]).kind
        for m in ("ordered", "current")
    }
    assert kinds == {"held", "lost"}
    shot = screenshot(runs.page, tmp_path / "comparison.png", width=1200, height=900)
    top = shot[: int(shot.shape[0] * 0.5)]
    for kind in ("held", "lost"):
        # a cell is some 400 x 45 pixels; the legend alone has under 2,000 of each
        assert pixels_of(top, VERDICT_KINDS[kind]) > 8000, kind
