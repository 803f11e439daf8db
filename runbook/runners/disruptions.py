"""How each event (registry.EVENTS) terminates the gateway pod on a cluster, through the
Kubernetes API as the tool people use does it, and what it puts back afterwards.

- `delete`: the pod deleted gracefully (`kubectl delete pod`).
- `drain`: the victim's node cordoned, then its gateway pod evicted through the Eviction
  API (`kubectl drain --pod-selector app=<gateway>`: the node's other pods stay, so the
  run measures the gateway's termination alone). The gateway's PodDisruptionBudget
  admits the eviction while the other replica is ready; a refusal (429) is retried
  until the deadline passed in. The node is uncordoned afterwards.
- `rollout`: the Deployment restarted (`kubectl rollout restart`: a new
  `kubectl.kubernetes.io/restartedAt` in its pod template); the Deployment controller
  replaces the pods one after another (a surge pod first, on the free seat), and every
  old pod but the victim carries the higher deletion cost, so the victim goes first.
  Each old pod is recorded as its termination begins; the first another than the
  victim ends the run. Nothing is put back but the annotations: the new pods are the
  rollout's result (the playbook's place step moves one left on the control plane).
- `scale-down`: the Deployment's replicas lowered by one (`kubectl scale`); the
  ReplicaSet picks the pod by its ranking, in which every pod but the victim carries a
  higher `controller.kubernetes.io/pod-deletion-cost` (so the victim is one HAProxy can
  see go DOWN, not the LB's own node's). The pod it deleted is read back and recorded;
  another than the victim ends the run. The replicas and the annotations are put back
  afterwards.

Each `terminate_*` is blocking (the runner calls it off its event loop) and returns
the pods it terminated; what the event changed beyond them goes in the `Restore` passed
in, which the runner calls however the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..artifacts.events import now_ms

#: The annotation the ReplicaSet controller ranks pods by on a scale-down (lower goes
#: first; Kubernetes 1.22+, beta and on by default).
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: What the survivors of a scale-down or a rollout carry: above the victim's default 0.
SURVIVOR_COST = "100"
#: The pod-template annotation `kubectl rollout restart` sets: a new value is a new
#: template, so the Deployment rolls every pod.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
#: How often a refused eviction is asked again, and the ReplicaSet's pick looked for.
RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Gateway:
    """Where an event acts: the API clients, and the gateway's namespace, Deployment and
    the selector of the pods the run follows."""

    core: client.CoreV1Api
    apps: client.AppsV1Api
    namespace: str
    deployment: str
    selector: str

    def pods(self) -> list[Any]:
        return list(
            self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        )


class EventFailed(RuntimeError):
    """The event could not be carried out as asked (named); what it changed is put back."""


@dataclass
class Restore:
    """What an event changed beyond the pod, undone by `__call__` last change first (a
    scale-down's replicas come back before the annotations that steered it go); each
    step runs once, and a failing one does not keep the others from running."""

    steps: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)

    def add(self, what: str, undo: Callable[[], Any]) -> None:
        self.steps.append((what, undo))

    def __call__(self) -> list[str]:
        """Every step run; the ones that failed, each as `what: error`."""
        failed = []
        while self.steps:
            what, undo = self.steps.pop()
            try:
                undo()
            except (ApiException, OSError) as exc:
                failed.append(f"{what}: {getattr(exc, 'reason', None) or exc}")
        return failed


@dataclass(frozen=True, slots=True)
class Terminated:
    """The pod the event terminated first (the victim); `pods`, when it terminated more,
    each in order with when its termination began (termination.json's `pods`)."""

    pod: str
    node: str
    #: what the API said along the way (an eviction refused, the pick read back), each
    #: with its `kind` and `ts_ms`: the runner records each as an experiment event
    notes: tuple[dict[str, Any], ...] = ()
    pods: tuple[dict[str, Any], ...] = ()


def refusal(exc: ApiException) -> str | None:
    """Why the Eviction API refused an eviction it may admit later (429: the
    PodDisruptionBudget allows no disruption now), or None for any other error."""
    if exc.status != 429:
        return None
    return str(exc.reason or "Too Many Requests")


def deleted_by_scale_down(pods: list[Any], before: set[str]) -> list[Any]:
    """Of one listing of the gateway's pods, those the ReplicaSet is deleting that were
    not being deleted before the scale-down (`before`: their names)."""
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is not None and p.metadata.name not in before
    ]


def newly_terminating(listed: list[Any], old: Iterable[str], seen: set[str]) -> list[str]:
    """Of the pods from before a rollout (`old`, names), in their order, those one listing
    shows being deleted, or no longer shows at all, that were not `seen` so already."""
    state = {p.metadata.name: p.metadata.deletion_timestamp is not None for p in listed}
    return [name for name in old if name not in seen and state.get(name, True)]


def terminate_delete(gw: Gateway, victim: Any) -> Terminated:
    gw.core.delete_namespaced_pod(victim.metadata.name, gw.namespace)  # the pod's own grace
    return Terminated(victim.metadata.name, victim.spec.node_name)


def terminate_drain(gw: Gateway, victim: Any, restore: Restore, deadline: float) -> Terminated:
    """Cordon the victim's node, then evict the victim until the Eviction API admits it
    or `deadline` (time.monotonic()) passes."""
    core, namespace = gw.core, gw.namespace
    node = victim.spec.node_name
    was = bool(core.read_node(node).spec.unschedulable)
    core.patch_node(node, {"spec": {"unschedulable": True}})
    restore.add(f"uncordon {node}", lambda: core.patch_node(node, {"spec": {"unschedulable": was}}))
    name = victim.metadata.name
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
    notes: list[dict[str, Any]] = [{"kind": "cordoned", "ts_ms": now_ms(), "node": node}]
    while True:
        try:
            core.create_namespaced_pod_eviction(name, namespace, body)
        except ApiException as exc:
            why = refusal(exc)
            if why is None:
                raise
            notes.append(
                {"kind": "eviction_refused", "ts_ms": now_ms(), "pod": name, "reason": why}
            )
            if time.monotonic() + RETRY_S > deadline:
                raise EventFailed(
                    f"the Eviction API refused to evict {name} until the deadline ({why}): "
                    "the gateway's PodDisruptionBudget admitted no disruption"
                ) from None
            time.sleep(RETRY_S)
            continue
        notes.append({"kind": "evicted", "ts_ms": now_ms(), "pod": name})
        return Terminated(name, node, tuple(notes))


def terminate_scale_down(
    gw: Gateway, victim: Any, pods: list[Any], restore: Restore, deadline: float
) -> Terminated:
    """Every pod but the victim ranked above it, the replicas lowered by one; the pod the
    ReplicaSet deletes, read back by `deadline` (time.monotonic())."""
    apps, namespace, deployment = gw.apps, gw.namespace, gw.deployment
    survivors = [p.metadata.name for p in pods if p.metadata.name != victim.metadata.name]
    _steer(gw, survivors, restore)
    replicas = apps.read_namespaced_deployment_scale(deployment, namespace).spec.replicas
    before = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is not None}
    apps.patch_namespaced_deployment_scale(
        deployment, namespace, {"spec": {"replicas": replicas - 1}}
    )
    restore.add(
        f"scale {deployment} back to {replicas}",
        lambda: apps.patch_namespaced_deployment_scale(
            deployment, namespace, {"spec": {"replicas": replicas}}
        ),
    )
    notes: tuple[dict[str, Any], ...] = (
        {
            "kind": "scaled",
            "ts_ms": now_ms(),
            "deployment": deployment,
            "from": replicas,
            "to": replicas - 1,
        },
    )
    while time.monotonic() < deadline:
        picked = deleted_by_scale_down(gw.pods(), before)
        if picked:
            pod = picked[0]
            if pod.metadata.name != victim.metadata.name:
                raise EventFailed(
                    f"the ReplicaSet deleted {pod.metadata.name} on {pod.spec.node_name}, "
                    f"not {victim.metadata.name} on {victim.spec.node_name}, though every "
                    f"other pod carried {DELETION_COST}={SURVIVOR_COST}"
                )
            picked_note = {"kind": "picked", "ts_ms": now_ms(), "pod": pod.metadata.name}
            return Terminated(pod.metadata.name, pod.spec.node_name, (*notes, picked_note))
        time.sleep(RETRY_S / 4)
    raise EventFailed(
        f"no gateway pod was being deleted by the deadline after scaling {deployment} "
        f"to {replicas - 1}"
    )


def terminate_rollout(
    gw: Gateway, victim: Any, pods: list[Any], restore: Restore, deadline: float
) -> Terminated:
    """Every old pod but the victim ranked above it, the Deployment restarted; each old
    pod recorded as its termination begins, until every one has or `deadline`
    (time.monotonic()) passes."""
    old = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]
    node_of = {p.metadata.name: p.spec.node_name for p in pods}
    _steer(gw, [n for n in old if n != victim.metadata.name], restore)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    gw.apps.patch_namespaced_deployment(
        gw.deployment,
        gw.namespace,
        {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}},
    )
    notes: list[dict[str, Any]] = [
        {"kind": "restarted", "ts_ms": now_ms(), "deployment": gw.deployment, "restarted_at": stamp}
    ]
    order: list[dict[str, Any]] = []
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for name in newly_terminating(gw.pods(), old, seen):
            seen.add(name)
            at = now_ms()
            order.append({"pod": name, "node": node_of[name], "ms": at})
            notes.append(
                {"kind": "old_pod_terminating", "ts_ms": at, "pod": name, "node": node_of[name]}
            )
            if len(order) == 1 and name != victim.metadata.name:
                raise EventFailed(
                    f"the rollout terminated {name} on {node_of[name]} first, not "
                    f"{victim.metadata.name} on {victim.spec.node_name}, though every other "
                    f"pod carried {DELETION_COST}={SURVIVOR_COST}"
                )
        if len(seen) == len(old):
            return Terminated(
                victim.metadata.name, victim.spec.node_name, tuple(notes), tuple(order)
            )
        time.sleep(RETRY_S / 4)
    raise EventFailed(
        f"the rollout of {gw.deployment} had begun terminating {len(seen)} of its {len(old)} "
        f"old pods ({', '.join(sorted(seen)) or 'none'}) by the deadline"
    )


def _steer(gw: Gateway, survivors: list[str], restore: Restore) -> None:
    """The survivors ranked above the victim for the ReplicaSet's next deletion."""
    for name in survivors:
        gw.core.patch_namespaced_pod(
            name, gw.namespace, {"metadata": {"annotations": {DELETION_COST: SURVIVOR_COST}}}
        )
        restore.add(
            f"unannotate {name}",
            lambda name=name: _unannotate(gw.core, gw.namespace, name),
        )


def _unannotate(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.patch_namespaced_pod(
            name, namespace, {"metadata": {"annotations": {DELETION_COST: None}}}
        )
    except ApiException as exc:
        if exc.status != 404:  # a pod gone since has nothing to put back
            raise
