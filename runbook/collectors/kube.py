"""The homelab's collectors that go through the Kubernetes API (the kubernetes client):
the gateway pods' lifecycle and their containers' log lines, the EndpointSlice
conditions, and Envoy's gauge through a port-forward.

They write the same events, to the same `collected/*.jsonl` files, as the local lab's
pod runner and collectors do; the analysis cannot tell the targets apart. Each runs in
a thread until `stop` is set. Tested only on a cluster (docs/testing.md).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import watch
from kubernetes.client import CoreV1Api, DiscoveryV1Api
from kubernetes.stream import portforward

from ..artifacts.events import EventLog
from ..model import registry
from .podlogs import event_from_line

WATCH_WINDOW_S = 5  # how often a watch returns to look at `stop`


def endpoint_event(pod: str, node: str | None, conditions: Any) -> dict[str, Any]:
    return {
        "pod": pod,
        "node": node,
        "ready": bool(conditions.ready),
        "serving": bool(conditions.serving),
        "terminating": bool(conditions.terminating),
    }


def watch_endpointslices(
    api: DiscoveryV1Api, namespace: str, service: str, sink: EventLog, stop: threading.Event
) -> None:
    last: dict[str, tuple[bool, bool, bool]] = {}
    while not stop.is_set():
        for ev in watch.Watch().stream(
            api.list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"kubernetes.io/service-name={service}",
            timeout_seconds=WATCH_WINDOW_S,
        ):
            for ep in ev["object"].endpoints or []:
                pod = ep.target_ref.name if ep.target_ref else ",".join(ep.addresses)
                fields = endpoint_event(pod, ep.node_name, ep.conditions)
                key = (fields["ready"], fields["serving"], fields["terminating"])
                if last.get(pod) != key:
                    last[pod] = key
                    sink.emit("endpointslice", "conditions", **fields)
            if stop.is_set():
                return


def watch_pods(
    api: CoreV1Api, namespace: str, selector: str, sink: EventLog, stop: threading.Event
) -> None:
    """kubelet's view, as the pod runner reports it locally: a pod marked terminating,
    containers ready or exited, the pod gone."""
    seen: dict[str, dict[str, Any]] = {}
    while not stop.is_set():
        for ev in watch.Watch().stream(
            api.list_namespaced_pod,
            namespace,
            label_selector=selector,
            timeout_seconds=WATCH_WINDOW_S,
        ):
            pod = ev["object"]
            name = pod.metadata.name
            state = seen.setdefault(name, {"terminating": False, "exited": set(), "ready": {}})
            if ev["type"] == "DELETED":
                sink.emit("kubelet", "pod_terminated", pod=name, node=pod.spec.node_name)
                seen.pop(name, None)
                continue
            if pod.metadata.deletion_timestamp and not state["terminating"]:
                state["terminating"] = True
                sink.emit(
                    "kubelet",
                    "pod_terminating",
                    pod=name,
                    node=pod.spec.node_name,
                    grace_s=pod.metadata.deletion_grace_period_seconds,
                )
            for cs in pod.status.container_statuses or []:
                if state["ready"].get(cs.name) != cs.ready:
                    state["ready"][cs.name] = cs.ready
                    sink.emit("kubelet", "readiness", pod=name, container=cs.name, ready=cs.ready)
                done = cs.state.terminated if cs.state else None
                if done and cs.name not in state["exited"]:
                    state["exited"].add(cs.name)
                    sink.emit(
                        "kubelet",
                        "container_exited",
                        pod=name,
                        container=cs.name,
                        code=done.exit_code,
                        reason=done.reason,
                    )
            if stop.is_set():
                return


def follow_logs(
    api: CoreV1Api,
    namespace: str,
    pod: str,
    container: str,
    sink: EventLog,
    stop: threading.Event,
    raw: Callable[[str], None] | None = None,
) -> None:
    """A container's log stream, from now until it ends (the container exits) or `stop`.
    Started before the deletion: a terminated pod's logs go with it."""
    resp = api.read_namespaced_pod_log(
        pod, namespace, container=container, follow=True, since_seconds=1, _preload_content=False
    )
    pending = b""
    try:
        for chunk in resp.stream(decode_content=True):
            # a chunk is not a line: keep the unfinished tail for the next one
            *lines, pending = (pending + chunk).split(b"\n")
            for line in (b.decode(errors="replace") for b in lines):
                if raw is not None:
                    raw(line)
                found = event_from_line(pod, container, line)
                if found is not None:
                    sink.write(found)
            if stop.is_set():
                return
    finally:
        resp.release_conn()


class _Tunnelled(http.client.HTTPConnection):
    """http.client over a socket that a port-forward already opened."""

    def __init__(self, sock: Any) -> None:
        super().__init__("localhost")
        self.sock = sock

    def connect(self) -> None:  # the socket is connected already
        return


class PortForwardAdmin:
    """GETs on a pod's Envoy admin port through the API server's port-forward."""

    def __init__(
        self, api: CoreV1Api, namespace: str, pod: str, port: int = registry.PORTS.envoy_admin
    ) -> None:
        self.api, self.namespace, self.pod, self.port = api, namespace, pod, port

    def get_json(self, path: str, params: Mapping[str, str]) -> Mapping[str, Any]:
        pf = portforward(
            self.api.connect_get_namespaced_pod_portforward,
            self.pod,
            self.namespace,
            ports=str(self.port),
        )
        try:
            sock = pf.socket(self.port)
            sock.settimeout(2)
            conn = _Tunnelled(sock)
            conn.request("GET", f"{path}?{urllib.parse.urlencode(params)}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"{self.pod} admin {path}: HTTP {resp.status}")
            return json.loads(body)
        finally:
            pf.close()
