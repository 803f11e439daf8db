"""The homelab runner's small decisions (runbook.runners.homelab), case by case, on the
Kubernetes client's own pod objects; the runner itself runs on onebox
(tests/test_onebox.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec, V1PodStatus

from runbook.runners.homelab import pick_victim, pods_seen

WORKERS = ["worker1", "worker2"]


def pod(name: str, node: str, phase: str = "Running", deleting: bool = False) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name, deletion_timestamp=datetime.now(UTC) if deleting else None
        ),
        spec=V1PodSpec(node_name=node, containers=[]),
        status=V1PodStatus(phase=phase),
    )


def test_the_victim_is_a_running_gateway_off_the_lb_s_node() -> None:
    pods = [pod("gw-b", "worker1"), pod("gw-a", "worker2"), pod("gw-c", "master1")]
    assert pick_victim(pods, WORKERS, "worker1").metadata.name == "gw-a"


@pytest.mark.parametrize(
    "pods",
    [
        # the only other worker's pod is already going, or not yet running
        [pod("gw-b", "worker1"), pod("gw-a", "worker2", deleting=True)],
        [pod("gw-b", "worker1"), pod("gw-a", "worker2", phase="Pending")],
        # off the workers (master1 is not behind HAProxy)
        [pod("gw-b", "worker1"), pod("gw-c", "master1")],
        [],
    ],
)
def test_no_victim_is_refused_naming_every_pod(pods: list[V1Pod]) -> None:
    where = ", ".join(f"{p.metadata.name}@{p.spec.node_name}" for p in pods) or "none"
    with pytest.raises(RuntimeError, match=rf"other than the LB's \(worker1\); pods: {where}$"):
        pick_victim(pods, WORKERS, "worker1")


@pytest.mark.parametrize(
    ("pods", "followed", "new", "victim_listed"),
    [
        # before the deletion: nothing new, the victim there
        ([pod("gw-a", "worker2"), pod("gw-b", "worker1")], {"gw-a", "gw-b"}, [], True),
        # the replacement pending, then running: followed from when it runs
        (
            [
                pod("gw-a", "worker2", deleting=True),
                pod("gw-b", "worker1"),
                pod("gw-c", "master1", phase="Pending"),
            ],
            {"gw-a", "gw-b"},
            [],
            True,
        ),
        (
            [pod("gw-a", "worker2", deleting=True), pod("gw-b", "worker1"), pod("gw-c", "master1")],
            {"gw-a", "gw-b"},
            ["gw-c"],
            True,
        ),
        # the victim gone from the listing
        ([pod("gw-b", "worker1"), pod("gw-c", "master1")], {"gw-a", "gw-b", "gw-c"}, [], False),
    ],
)
def test_one_listing_names_new_running_pods_and_whether_the_victim_is_there(
    pods: list[V1Pod], followed: set[str], new: list[str], victim_listed: bool
) -> None:
    assert pods_seen(pods, followed, "gw-a") == (new, victim_listed)
