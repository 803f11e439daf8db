"""The events beside mode and scenario (registry.EVENTS): their names, where each may
run, how a run is named and grouped under one, and the cluster runner's small helpers
(runbook.runners.disruptions), case by case. Each event on a real cluster:
tests/test_onebox.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from runbook.analysis.report import case_order, summaries_by_pair
from runbook.artifacts.rundir import new_run_dir
from runbook.model import registry
from runbook.model.plan import for_event, plan
from runbook.runners import disruptions


def test_a_case_names_a_scenario_under_an_event_and_back() -> None:
    assert registry.case("steady", "delete") == "steady"
    assert registry.case("steady", "drain") == "steady@drain"
    assert registry.split_case("steady@scale-down") == ("steady", "scale-down")
    assert registry.split_case("inflight") == ("inflight", "delete")
    with pytest.raises(registry.UnknownName, match="event 'evict' is not one of: delete"):
        registry.split_case("steady@evict")
    with pytest.raises(registry.UnknownName, match="scenario 'soak' is not one of"):
        registry.split_case("soak@drain")


@pytest.mark.parametrize(
    ("event", "target", "refused"),
    [
        ("delete", "local", None),
        ("delete", "onebox", None),
        ("drain", "onebox", None),
        ("scale-down", "homelab", None),
        ("drain", "local", "no cordon, no Eviction API"),
        ("scale-down", "local", "no ReplicaSet controller"),
        ("rollout", "local", "no Deployment controller"),
        ("rollout", "onebox", None),
    ],
)
def test_each_event_runs_where_its_parts_are_and_is_refused_elsewhere_saying_why(
    event: str, target: str, refused: str | None
) -> None:
    if refused is None:
        assert registry.event_on(event, target).name == event
        return
    with pytest.raises(registry.UnknownName, match=refused):
        registry.event_on(event, target)


def test_an_event_other_than_delete_is_in_the_plan_and_its_notes() -> None:
    seed = plan("quick", "ordered", "steady")
    assert seed.event == "delete" and for_event(seed, "delete") == seed
    drained = for_event(seed, "drain")
    assert drained.as_dict()["event"] == "drain"
    assert drained.notes[-1].startswith("The event is drain: the victim's node cordoned")
    assert type(seed).from_dict(drained.as_dict()).event == "drain"
    # a plan written before events were named was a deletion's
    old = {k: v for k, v in seed.as_dict().items() if k != "event"}
    assert type(seed).from_dict(old).event == "delete"


def test_a_run_directory_names_its_event_unless_it_is_a_deletion(tmp_path: Path) -> None:
    assert new_run_dir(tmp_path, "steady", "ordered").name.endswith("-steady-ordered")
    drained = new_run_dir(tmp_path, "steady", "ordered", "drain")
    assert drained.name.endswith("-steady-drain-ordered")


def test_the_comparison_groups_runs_by_scenario_then_event(tmp_path: Path) -> None:
    made = []
    for sc, ev, mode in [
        ("steady", "scale-down", "ordered"),
        ("steady", "delete", "current"),
        ("inflight", "drain", "ordered"),
        ("steady", "drain", "ordered"),
        ("inflight", None, "ordered"),  # a summary from before events: a deletion
    ]:
        d = tmp_path / f"{sc}-{ev}-{mode}"
        d.mkdir()
        summary: dict[str, Any] = {"scenario": sc, "mode": mode}
        if ev is not None:
            summary["event"] = ev
        (d / "summary.json").write_text(json.dumps(summary))
        made.append(d)
    grouped = summaries_by_pair(made)
    assert list(grouped) == [
        "inflight",
        "inflight@drain",
        "steady",
        "steady@drain",
        "steady@scale-down",
    ]
    assert sorted(["steady@rollout", "steady", "steady@drain"], key=case_order) == [
        "steady",
        "steady@drain",
        "steady@rollout",
    ]


def test_an_eviction_refused_by_the_budget_is_told_from_any_other_error() -> None:
    assert disruptions.refusal(ApiException(status=429, reason="Too Many Requests")) == (
        "Too Many Requests"
    )
    assert disruptions.refusal(ApiException(status=404, reason="Not Found")) is None
    assert disruptions.refusal(ApiException(status=500, reason="Internal")) is None


def _pod(name: str, deleting: bool = False, node: str = "worker2") -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, deletion_timestamp="now" if deleting else None),
        spec=SimpleNamespace(node_name=node),
    )


def test_the_scale_down_s_pick_is_the_pod_newly_being_deleted() -> None:
    pods = [_pod("a"), _pod("b", deleting=True), _pod("c", deleting=True)]
    # c was already terminating (a moved pod, say) before the scale-down
    assert [p.metadata.name for p in disruptions.deleted_by_scale_down(pods, {"c"})] == ["b"]
    assert disruptions.deleted_by_scale_down([_pod("a")], set()) == []


def test_restore_runs_every_step_once_last_first_and_names_those_that_failed() -> None:
    done: list[str] = []

    def fails() -> None:
        done.append("annotation")
        raise ApiException(status=500, reason="Internal Server Error")

    # added in the order the changes were made; undone last change first
    restore = disruptions.Restore()
    restore.add("scale back", lambda: done.append("scale"))
    restore.add("unannotate a", fails)
    restore.add("uncordon worker2", lambda: done.append("uncordon"))
    assert restore() == ["unannotate a: Internal Server Error"]
    assert done == ["uncordon", "annotation", "scale"]
    assert restore() == [] and done == ["uncordon", "annotation", "scale"]


def test_a_rollout_s_old_pods_are_recorded_as_their_termination_begins_or_they_are_gone() -> None:
    old = ["a", "b"]
    # the surge pod c starts; neither old pod is going yet
    assert disruptions.newly_terminating([_pod("a"), _pod("b"), _pod("c")], old, set()) == []
    assert disruptions.newly_terminating([_pod("a", True), _pod("b"), _pod("c")], old, set()) == [
        "a"
    ]
    # a seen already; b gone between two listings is recorded all the same
    assert disruptions.newly_terminating([_pod("c"), _pod("d")], old, {"a"}) == ["b"]
    assert disruptions.newly_terminating([_pod("c"), _pod("d")], old, {"a", "b"}) == []
