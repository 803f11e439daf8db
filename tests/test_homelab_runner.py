"""The homelab runner's small decisions (runbook.runners.homelab), case by case, on the
Kubernetes client's own pod objects; the runner itself runs on onebox
(tests/test_onebox.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec, V1PodStatus

from runbook.runners.homelab import pick_victim, pods_seen

WORKERS = ["worker1", "worker2"]
ROOT = Path(__file__).resolve().parent.parent


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
    found, listed = pods_seen(pods, followed)
    assert found == new
    assert ("gw-a" in listed) is victim_listed
    assert listed == {p.metadata.name for p in pods}


RUNNERS = {
    "runbook.runners.homelab": [
        "--context=none",
        "--namespace=service-a",
        "--url=https://198.18.0.1",
        "--lb=worker1",
        "--workers=worker1,worker2",
        "--run-dir={tmp}/run",
    ],
    "runbook.runners.local": [
        "--manifests=none",
        "--haproxy-socket=none",
        "--haproxy-url=https://198.18.0.1",
        "--syslog=127.0.0.1:1",
        "--artifacts={tmp}/artifacts",
    ],
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_grpc_without_the_lab_s_ca_is_refused_before_anything_starts(
    tmp_path: Path, runner: str
) -> None:
    """gRPC's TLS cannot skip verifying the LB: a scenario with grpc_stream and no --ca
    is refused at once, naming why, and nothing is written."""
    own = [a.format(tmp=tmp_path) for a in RUNNERS[runner]]
    result = subprocess.run(
        [sys.executable, "-m", runner, *own, "--mode=ordered", "--scenario=h2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "scenario 'h2' drives grpc_stream, which needs the lab's CA file (--ca)" in (
        result.stderr
    )
    assert "nothing was started" in result.stderr
    assert list(tmp_path.iterdir()) == []
