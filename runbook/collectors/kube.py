"""The homelab's collectors that go through the Kubernetes API (the kubernetes client):
the gateway pods' lifecycle and their containers' log lines, the EndpointSlice
conditions, and Envoy's gauge through a port-forward.

They write the same events, to the same `collected/*.jsonl` files, as the local lab's
pod runner and collectors do; the analysis cannot tell the targets apart. Each runs in
a thread until `stop` is set. Tested on onebox (tests/test_onebox.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api, DiscoveryV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward
from websocket import WebSocketException

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


def _windows(
    list_fn: Callable[..., Any], namespace: str, selector: str, stop: threading.Event
) -> Iterator[dict[str, Any]]:
    """A watch's events in windows of WATCH_WINDOW_S (so `stop` is seen), each window
    resuming from the last resource version seen: a change between two windows (a
    deletion, say) is delivered, not lost. It starts from a list (each object as
    ADDED) and the list's own version: a watch from no version announces each object
    at that object's version, older than the others' changes, and the next window,
    resuming from it, replayed them (seen on onebox: a pod deleted before the run
    reported as terminated during it). When the API server no longer has the version
    (410 Gone; the client raises it, a window having a timeout) it lists again."""
    w = watch.Watch()
    version: str | None = None
    while not stop.is_set():
        try:
            if version is None:
                listed = list_fn(namespace, label_selector=selector)
                for obj in listed.items:
                    yield {"type": "ADDED", "object": obj}
                version = listed.metadata.resource_version
                continue
            for ev in w.stream(
                list_fn,
                namespace,
                label_selector=selector,
                timeout_seconds=WATCH_WINDOW_S,
                resource_version=version,
            ):
                yield ev
                if stop.is_set():
                    return
            else:
                version = w.resource_version or version
        except ApiException as exc:
            if exc.status != 410:
                raise
            version = None


def watch_endpointslices(
    api: DiscoveryV1Api, namespace: str, service: str, sink: EventLog, stop: threading.Event
) -> None:
    last: dict[str, tuple[bool, bool, bool]] = {}
    selector = f"kubernetes.io/service-name={service}"
    for ev in _windows(api.list_namespaced_endpoint_slice, namespace, selector, stop):
        for ep in ev["object"].endpoints or []:
            pod = ep.target_ref.name if ep.target_ref else ",".join(ep.addresses)
            fields = endpoint_event(pod, ep.node_name, ep.conditions)
            key = (fields["ready"], fields["serving"], fields["terminating"])
            if last.get(pod) != key:
                last[pod] = key
                sink.emit("endpointslice", "conditions", **fields)


def watch_pods(
    api: CoreV1Api, namespace: str, selector: str, sink: EventLog, stop: threading.Event
) -> None:
    """kubelet's view, as the pod runner reports it locally: a pod marked terminating,
    containers ready or exited, the pod gone."""
    seen: dict[str, dict[str, Any]] = {}
    for ev in _windows(api.list_namespaced_pod, namespace, selector, stop):
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


def follow_logs(
    api: CoreV1Api,
    namespace: str,
    pod: str,
    container: str,
    sink: EventLog,
    stop: threading.Event,
    raw: Callable[[str], None] | None = None,
    since_seconds: int | None = 1,
) -> None:
    """A container's log stream, from `since_seconds` ago (None: from its start) until
    it ends (the container exits) or `stop`. A terminated pod's logs go with it, so a
    stream is opened as soon as the container runs."""
    since = {"since_seconds": since_seconds} if since_seconds else {}
    try:
        resp = api.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False, **since
        )
    except ApiException as exc:  # the pod went before its stream opened
        sink.emit("collector", "log_stream_failed", pod=pod, container=container, status=exc.status)
        return
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
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # the stream cut, not ended
        sink.emit("collector", "log_stream_cut", pod=pod, container=container, error=repr(exc))
    finally:
        resp.release_conn()


def _started(pod: Any, container: str) -> bool:
    for cs in pod.status.container_statuses or []:
        if cs.name == container and cs.state and (cs.state.running or cs.state.terminated):
            return True
    return False


def follow_every_container(
    api: CoreV1Api,
    namespace: str,
    selectors: list[str],
    sink: EventLog,
    stop: threading.Event,
    every_s: float = 1.0,
) -> None:
    """A log stream for every container of every pod the selectors match, the ones a
    pod has (istio-native's gateway has no hc), opened once each: pods that exist now
    from a second ago, pods that appear during the run (a replacement, a rollout) from
    their containers' start."""
    followed: set[tuple[str, str]] = set()
    first = True
    while not stop.is_set():
        for selector in selectors:
            with contextlib.suppress(ApiException, urllib3.exceptions.HTTPError, OSError):
                for pod in api.list_namespaced_pod(namespace, label_selector=selector).items:
                    for c in pod.spec.containers:
                        key = (pod.metadata.name, c.name)
                        if key in followed or not _started(pod, c.name):
                            continue
                        followed.add(key)
                        threading.Thread(
                            target=follow_logs,
                            args=(api, namespace, pod.metadata.name, c.name, sink, stop),
                            kwargs={"since_seconds": 1 if first else None},
                            daemon=True,  # a log stream ends with its container, or with us
                        ).start()
        first = False
        stop.wait(every_s)


class _Tunnelled(http.client.HTTPConnection):
    """http.client over a socket that a port-forward already opened."""

    def __init__(self, sock: Any) -> None:
        super().__init__("localhost")
        self.sock = sock

    def connect(self) -> None:  # the socket is connected already
        return


class PortForwardAdmin:
    """GETs on a pod's Envoy admin port through the API server's port-forward.

    `kubernetes.stream.portforward` swaps `call_api` on its API object's client for the
    length of its handshake: a call made meanwhile on the same client by another thread
    (a watch, a log stream, the deletion) would go out as a port-forward and fail
    ("Missing required parameter `ports`"). Each instance therefore has a client of its
    own, built from the given one's configuration, used by nothing else.
    """

    def __init__(
        self, api: CoreV1Api, namespace: str, pod: str, port: int = registry.PORTS.envoy_admin
    ) -> None:
        self.api = CoreV1Api(ApiClient(api.api_client.configuration))
        self.namespace, self.pod, self.port = namespace, pod, port

    def get_json(self, path: str, params: Mapping[str, str]) -> Mapping[str, Any]:
        """The JSON answer; OSError when the pod cannot be reached or does not answer 200
        (a refused port-forward is an ApiException with status 0, a closed one a
        websocket error: both become OSError, as for the local lab's HTTP admin)."""
        try:
            pf = portforward(
                self.api.connect_get_namespaced_pod_portforward,
                self.pod,
                self.namespace,
                ports=str(self.port),
            )
        except (ApiException, WebSocketException) as exc:
            raise OSError(f"{self.pod} admin {path}: port-forward refused: {exc}") from exc
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
        except (http.client.HTTPException, WebSocketException) as exc:
            raise OSError(f"{self.pod} admin {path}: {exc!r}") from exc
        finally:
            pf.close()
