"""onebox for real: the cluster `make onebox` brings up, the behaviours the experiment
rests on, each on the real Kubernetes components, and `make onebox-down` leaving
nothing behind.

The session brings onebox up from the build cache (building first on a machine that
never built: tens of minutes), runs everything against it, and removes it at the
end (the last test). A onebox already running on this machine is used as it is.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ChartRepo, fill
from runbook.model import registry
from runbook.onebox.build import module_source
from runbook.onebox.images import BUSYBOX_IMAGE, ISTIO_IMAGES, agnhost_ref, e2e_images, istio_tag
from runbook.onebox.machines import CGROUP_CONTROLLERS
from runbook.onebox.pins import read_pins

pytestmark = pytest.mark.onebox

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = yaml.safe_load((ROOT / "inventory/onebox/group_vars/all/onebox.yml").read_text())
#: the homelab's own settings, which onebox takes as they are
HOMELAB = yaml.safe_load((ROOT / "inventory/onebox/group_vars/all/homelab.yml").read_text())
HOSTS = yaml.safe_load((ROOT / "inventory/onebox/hosts.yml").read_text())["all"]["children"]
NODES = {
    name: host["ansible_host"]
    for group in ("kube_control_plane", "workers")
    for name, host in HOSTS[group]["hosts"].items()
}
PINS = read_pins(ROOT / "onebox/modules")
CONTEXT = INVENTORY["kube_context"]
NAMESPACE = "onebox-test"


class Kube:
    """kubectl as built from the pinned module, on the onebox context."""

    def __init__(self) -> None:
        self.kubectl = (
            Path(INVENTORY["onebox_cache_dir"]) / "bin" / PINS["kubernetes"].key / "kubectl"
        )
        self.agnhost = ""
        self.pause = ""
        self.istio_tag = ""
        self.e2e_test = Path()

    def kubeadm_images(self) -> list[str]:
        """The images kubeadm names for the pinned version (and onebox built)."""
        return subprocess.run(
            [
                str(self.kubectl.with_name("kubeadm")),
                "config",
                "images",
                "list",
                f"--kubernetes-version={PINS['kubernetes'].version}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()

    def argv(self, *args: str) -> list[str]:
        return [str(self.kubectl), f"--context={CONTEXT}", *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> str:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, input=stdin
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: rc={proc.returncode}\n{proc.stderr}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--output=json"))

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = manifest if isinstance(manifest, list) else [manifest]
        self.run(
            "apply",
            "--filename=-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def ns(self, *args: str) -> list[str]:
        return [f"--namespace={NAMESPACE}", *args]


def make(target: str, log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    with log.open("w") as out:
        return subprocess.run(
            ["make", "--no-print-directory", target],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def onebox_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onebox")


@pytest.fixture(scope="session")
def kube(onebox_logs: Path) -> Iterator[Kube]:
    log = onebox_logs / "make-onebox.log"
    started = time.monotonic()
    proc = make("onebox", log, timeout=3600)
    assert proc.returncode == 0, f"make onebox failed ({log}):\n{log.read_text()[-4000:]}"
    print(f"make onebox: {time.monotonic() - started:.0f}s", file=sys.stderr)
    k = Kube()
    cache = Path(INVENTORY["onebox_cache_dir"])
    k.e2e_test = k.kubectl.with_name("e2e.test")
    k.agnhost = agnhost_ref(e2e_images(k.e2e_test))
    k.istio_tag = istio_tag(PINS["istio"], module_source(PINS["istio"], cache))
    k.pause = next(ref for ref in k.kubeadm_images() if "/pause:" in ref)
    k.run("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=180)
    k.run("create", "namespace", NAMESPACE)
    yield k


def wait_for(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout:.0f}s (last: {last!r})")


# --- the cluster -----------------------------------------------------------------


def test_three_ready_nodes_shaped_like_the_homelab(kube: Kube) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube.json("get", "nodes")["items"]}
    assert sorted(nodes) == sorted(NODES)
    for name, node in nodes.items():
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == NODES[name]
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == PINS["kubernetes"].version
        assert info["containerRuntimeVersion"].startswith("containerd://")
    taints = nodes["master1"]["spec"].get("taints", [])
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in taints
    for worker in ("worker1", "worker2"):
        assert not nodes[worker]["spec"].get("taints")
    version = json.loads(kube.run("get", "--raw=/version"))
    assert version["gitVersion"] == PINS["kubernetes"].version


def test_the_control_plane_runs_the_images_built_here(kube: Kube) -> None:
    pods = kube.json("get", "pods", "--namespace=kube-system")["items"]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    expected = kube.kubeadm_images()
    # pause runs under every pod, not as a container of one
    assert images == {ref for ref in expected if "/pause:" not in ref}
    for pod in pods:
        for status in pod["status"].get("containerStatuses", []):
            assert status["ready"], pod["metadata"]["name"]


def test_a_second_make_onebox_changes_nothing(kube: Kube, onebox_logs: Path) -> None:
    log = onebox_logs / "make-onebox-again.log"
    proc = make("onebox", log, timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", text, re.M)
    assert {host for host, _ in recap} == {"localhost", *NODES}, text[-2000:]
    assert all(changed == "0" for _, changed in recap), recap


# --- the behaviours the experiment rests on ---------------------------------------


def anti_affinity_deployment(kube: Kube, name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": labels},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "pause",
                            "image": kube.pause,
                            # imported with ctr, never pulled: IfNotPresent must find it
                            "imagePullPolicy": "IfNotPresent",
                        }
                    ],
                },
            },
        },
    }


def test_a_surge_pod_needs_master1_untainted_under_required_anti_affinity(kube: Kube) -> None:
    """Replicas = workers, maxSurge 1, one pod per node: the surge pod has no seat until
    master1's control-plane taint is removed (the scheduler), as on the homelab."""
    name = "seats"
    kube.apply(anti_affinity_deployment(kube, name, len(NODES) - 1))
    kube.run(*kube.ns("rollout", "status", f"deployment/{name}", "--timeout=120s"), timeout=150)
    kube.run(*kube.ns("rollout", "restart", f"deployment/{name}"))
    try:
        stuck = kube.run(
            *kube.ns("rollout", "status", f"deployment/{name}", "--timeout=15s"),
            check=False,
            timeout=60,
        )
        assert "successfully rolled out" not in stuck
        events = kube.json(*kube.ns("get", "events", "--field-selector=reason=FailedScheduling"))[
            "items"
        ]
        messages = " ".join(e["message"] for e in events)
        assert "anti-affinity" in messages and "untolerated taint" in messages, messages
        kube.run("taint", "node", "master1", "node-role.kubernetes.io/control-plane:NoSchedule-")
        kube.run(*kube.ns("rollout", "status", f"deployment/{name}", "--timeout=120s"), timeout=150)
    finally:
        kube.run(
            "taint",
            "node",
            "master1",
            "node-role.kubernetes.io/control-plane:NoSchedule",
            "--overwrite",
        )
        kube.run(*kube.ns("delete", "deployment", name, "--wait=false"))


def http_get(url: str, timeout: float) -> tuple[int, str] | str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def http_answer(url: str) -> tuple[int, str] | None:
    answer = http_get(url, 2)
    return answer if isinstance(answer, tuple) else None


def netexec_pod(kube: Kube, name: str, node: str, readiness: bool = False) -> dict[str, Any]:
    """agnhost's HTTP server on a chosen node (its image imported, never pulled)."""
    container: dict[str, Any] = {
        "name": "netexec",
        "image": kube.agnhost,
        "imagePullPolicy": "IfNotPresent",
        "args": ["netexec", "--http-port=8080"],
    }
    if readiness:
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": 8080},
            "periodSeconds": 1,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [container]},
    }


def service(name: str, port: int, target_port: int, local_nodeport: bool = False) -> dict[str, Any]:
    """A Service for the pods labelled app=<name>; a NodePort one with the homelab's
    `externalTrafficPolicy: Local` when asked."""
    spec: dict[str, Any] = {
        "selector": {"app": name},
        "ports": [{"name": "http", "port": port, "targetPort": target_port}],
    }
    if local_nodeport:
        spec |= {"type": "NodePort", "externalTrafficPolicy": "Local"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def test_nodeport_with_local_traffic_policy_answers_only_where_an_endpoint_is(kube: Kube) -> None:
    """kube-proxy's iptables rules: a NodePort with externalTrafficPolicy Local answers
    on the node with a ready endpoint and not on the other worker."""
    name = "local-np"
    kube.apply(
        [
            netexec_pod(kube, name, "worker1", readiness=True),
            service(name, 80, 8080, local_nodeport=True),
        ]
    )
    try:
        kube.run(
            *kube.ns("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s"), timeout=120
        )
        port = kube.json(*kube.ns("get", "service", name))["spec"]["ports"][0]["nodePort"]
        answer = wait_for(
            "worker1's NodePort answering",
            lambda: http_answer(f"http://{NODES['worker1']}:{port}/hostname"),
            timeout=30,
        )
        assert answer == (200, name)
        refused = http_get(f"http://{NODES['worker2']}:{port}/hostname", 2)
        assert isinstance(refused, str), refused
    finally:
        kube.run(*kube.ns("delete", "pod,service", name, "--wait=false"))


def test_graceful_delete_runs_prestop_then_sigterm_then_sigkill_at_the_grace_period(
    kube: Kube,
) -> None:
    """kubelet runs the preStop hook first, SIGTERM after it, SIGKILL when the grace
    period ends; meanwhile the controller-manager keeps the endpoint in its
    EndpointSlice as ready=false, serving=true, terminating=true until it is gone."""
    name = "lifecycle"
    grace, prestop = 8, 3
    hook = f"echo prestop-at $(date +%s) > /proc/1/fd/1; sleep {prestop}"
    script = (
        "trap 'echo term-at $(date +%s); sleep 600' TERM; echo started; "
        "while true; do sleep 0.2; done"
    )
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
                "spec": {
                    "nodeName": "worker2",
                    "terminationGracePeriodSeconds": grace,
                    "containers": [
                        {
                            "name": "main",
                            "image": BUSYBOX_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", script],
                            "readinessProbe": {
                                "exec": {"command": ["/bin/true"]},
                                "periodSeconds": 1,
                            },
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": [
                                            "/bin/sh",
                                            "-c",
                                            hook,
                                        ]
                                    }
                                }
                            },
                        }
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
            },
        ]
    )
    kube.run(*kube.ns("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s"), timeout=120)
    lines: list[tuple[float, str]] = []
    follow = subprocess.Popen(
        kube.argv(*kube.ns("logs", "--follow", name)), stdout=subprocess.PIPE, text=True
    )
    reader = threading.Thread(
        target=lambda: [lines.append((time.time(), ln.strip())) for ln in follow.stdout or []],
        daemon=True,
    )
    reader.start()
    try:
        wait_for("kubectl logs -f streaming", lambda: any(ln == "started" for _, ln in lines), 20)
        deleted_at = time.time()
        kube.run(*kube.ns("delete", "pod", name, "--wait=false"))
        conditions: list[dict[str, Any]] = []
        gone_at = None
        deadline = deleted_at + grace + 20
        while time.time() < deadline:
            slices = kube.json(
                *kube.ns("get", "endpointslices", f"--selector=kubernetes.io/service-name={name}")
            )
            endpoints = [e for s in slices["items"] for e in s.get("endpoints") or []]
            conditions += [e.get("conditions", {}) for e in endpoints]
            pod = kube.run(*kube.ns("get", "pod", name, "--ignore-not-found", "--output=name"))
            if not pod.strip():
                gone_at = time.time()
                break
            time.sleep(0.5)
        assert gone_at is not None, "pod not gone"
    finally:
        follow.send_signal(signal.SIGTERM)
        follow.wait(10)
    stamps = {ln.split()[0]: (seen, ln) for seen, ln in lines if ln.split()[0].endswith("-at")}
    assert "prestop-at" in stamps and "term-at" in stamps, lines
    prestop_at = int(stamps["prestop-at"][1].split()[1])
    term_at = int(stamps["term-at"][1].split()[1])
    # SIGTERM only after the hook's sleep; SIGKILL at the grace period (the trap sleeps on)
    assert term_at - prestop_at >= prestop - 1, (prestop_at, term_at)
    assert grace - 1 <= gone_at - deleted_at <= grace + 8, gone_at - deleted_at
    assert {"ready": False, "serving": True, "terminating": True} in conditions, conditions
    kube.run(*kube.ns("delete", "service", name, "--wait=false"))


def test_exec_and_port_forward_work(kube: Kube) -> None:
    """The homelab collectors stream logs (above), exec into pods and port-forward."""
    name = "tools"
    kube.apply(netexec_pod(kube, name, "worker1"))
    try:
        kube.run(
            *kube.ns("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s"), timeout=120
        )
        # kubelet wrote the pod's resolv.conf: the namespace's search list, read from inside
        suffixes = kube.run(*kube.ns("exec", name, "--", "/agnhost", "dns-suffix")).strip()
        assert suffixes == f"{NAMESPACE}.svc.cluster.local,svc.cluster.local,cluster.local"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        forward = subprocess.Popen(
            kube.argv(*kube.ns("port-forward", f"pod/{name}", f"{port}:8080")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            answer = wait_for(
                "port-forward answering",
                lambda: http_answer(f"http://127.0.0.1:{port}/hostname"),
                timeout=30,
            )
            assert answer == (200, name)
        finally:
            forward.terminate()
            forward.wait(10)
    finally:
        kube.run(*kube.ns("delete", "pod", name, "--wait=false"))


# --- upstream's own tests of the same behaviours ------------------------------------


def test_kubernetes_conformance_tests_for_those_behaviours_pass(
    kube: Kube, onebox_logs: Path
) -> None:
    """The pinned e2e suite's conformance tests for NodePort services, EndpointSlices,
    lifecycle hooks, preStop and graceful removal (runbook.onebox.conformance.FOCUS)."""
    report = onebox_logs / "conformance"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.onebox.conformance",
            f"--e2e-test={kube.e2e_test}",
            f"--context={CONTEXT}",
            f"--report-dir={report}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    print(proc.stdout, file=sys.stderr)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}{proc.stderr[-3000:]} ({report})"
    summary = json.loads((report / "conformance.json").read_text())
    assert summary["problems"] == []
    assert summary["passed"] == summary["ran"] >= 15, summary["ran"]


# --- Istio ---------------------------------------------------------------------------

ISTIO_NAMESPACE = "istio-system"


def test_istiod_runs_the_pinned_build(kube: Kube) -> None:
    """istiod from the pinned module's chart, on the image built here, and Ready."""
    deployment = kube.json("get", "deployment", "istiod", f"--namespace={ISTIO_NAMESPACE}")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{ISTIO_IMAGES}/pilot:{kube.istio_tag}"
    assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
    version = kube.run(
        f"--namespace={ISTIO_NAMESPACE}",
        "exec",
        "deployment/istiod",
        "--",
        "pilot-discovery",
        "version",
        "--short",
    ).strip()
    # the release line and "-dev" the build gave it (runbook.onebox.build.version_ldflags)
    assert version == f"client version: {kube.istio_tag.rsplit('-', 1)[0]}", version


def istio_gateway_pod(kube: Kube, name: str, node: str) -> dict[str, Any]:
    """A gateway like the homelab's istio-proxy container (pilot-agent in router mode,
    its identity from a projected token, no injection), on our proxy image."""
    field = {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "INSTANCE_IP": "status.podIP",
        "SERVICE_ACCOUNT": "spec.serviceAccountName",
        "NODE_NAME": "spec.nodeName",
    }
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field.items()]
    env += [
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": f"istiod.{ISTIO_NAMESPACE}.svc:15012"},
        {"name": "JWT_POLICY", "value": "third-party-jwt"},
    ]
    empty = ["workload-socket", "credential-socket", "workload-certs", "istio-data", "istio-envoy"]
    mounts = {
        "workload-socket": "/var/run/secrets/workload-spiffe-uds",
        "credential-socket": "/var/run/secrets/credential-uds",
        "workload-certs": "/var/run/secrets/workload-spiffe-credentials",
        "istio-data": "/var/lib/istio/data",
        "istio-envoy": "/etc/istio/proxy",
        "istiod-ca-cert": "/var/run/secrets/istio",
        "istio-token": "/var/run/secrets/tokens",
    }
    volumes: list[dict[str, Any]] = [{"name": v, "emptyDir": {}} for v in empty]
    volumes += [
        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
        {
            "name": "istio-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "istio-ca",
                            "expirationSeconds": 43200,
                            "path": "istio-token",
                        }
                    }
                ]
            },
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app": name, "istio": name},
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "istio-proxy",
                    "image": f"{ISTIO_IMAGES}/proxyv2:{kube.istio_tag}",
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["proxy", "router", "--domain", f"{NAMESPACE}.svc.cluster.local"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": env,
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz/ready", "port": 15021},
                        "periodSeconds": 2,
                    },
                    "securityContext": {
                        "runAsUser": 1337,
                        "runAsGroup": 1337,
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": k, "mountPath": v} for k, v in mounts.items()],
                }
            ],
            "volumes": volumes,
        },
    }


def test_a_gateway_and_virtualservice_route_a_nodeport_request_to_a_backend(kube: Kube) -> None:
    """istiod gives our proxy image its listener from a Gateway and a VirtualService,
    and a request to a worker's NodePort goes through that Envoy to a backend pod."""
    gw, backend, host = "istio-gw", "istio-backend", "igw.onebox.test"
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": gw, "namespace": NAMESPACE},
        "spec": {
            "selector": {"istio": gw},
            "servers": [
                {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": [host]}
            ],
        },
    }
    route = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": gw, "namespace": NAMESPACE},
        "spec": {
            "hosts": [host],
            "gateways": [gw],
            "http": [
                {
                    "route": [
                        {
                            "destination": {
                                "host": f"{backend}.{NAMESPACE}.svc.cluster.local",
                                "port": {"number": 80},
                            }
                        }
                    ]
                }
            ],
        },
    }
    kube.apply(
        [
            netexec_pod(kube, backend, "worker1", readiness=True),
            service(backend, 80, 8080),
            gateway,
            route,
            istio_gateway_pod(kube, gw, "worker2"),
            service(gw, 8080, 8080, local_nodeport=True),
        ]
    )
    try:
        ready = subprocess.run(
            kube.argv(
                *kube.ns(
                    "wait", "--for=condition=Ready", f"pod/{gw}", f"pod/{backend}", "--timeout=180s"
                )
            ),
            capture_output=True,
            text=True,
            timeout=200,
        )
        logs = kube.run(*kube.ns("logs", gw, "--tail=40"), check=False)
        assert ready.returncode == 0, f"{ready.stderr}\nistio-proxy:\n{logs}"
        listeners = kube.run(
            *kube.ns("exec", gw, "--", "pilot-agent", "request", "GET", "listeners")
        )
        assert "0.0.0.0_8080" in listeners, f"{listeners}\nistio-proxy:\n{logs}"
        port = kube.json(*kube.ns("get", "service", gw))["spec"]["ports"][0]["nodePort"]
        url = f"http://{NODES['worker2']}:{port}/hostname"

        def through_envoy() -> tuple[int, str, str] | None:
            request = urllib.request.Request(url, headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    return r.status, r.read().decode(), r.headers.get("server", "")
            except OSError:
                return None

        answer = wait_for("the gateway's NodePort routing to the backend", through_envoy, 60)
        # netexec answers its pod's name; Envoy names itself in the server header
        assert answer == (200, backend, "istio-envoy"), answer
    finally:
        kube.run(*kube.ns("delete", "pod,service", gw, backend, "--wait=false"), check=False)
        kube.run(
            *kube.ns("delete", "gateway.networking.istio.io,virtualservice", gw, "--wait=false"),
            check=False,
        )


# --- and gone -----------------------------------------------------------------------


# --- the homelab path on onebox ---------------------------------------------------
# site.yml, verify and run-experiment.yml on inventory/onebox: the homelab's roles and
# defaults over SSH to real nodes, the runner against the real API server.

HOMELAB_NAMESPACE = registry.OBJECTS.namespace


def ansible_playbook(
    playbook: str, log: Path, *extra: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -i inventory/onebox, the venv's, its output kept in `log`."""
    bin_dir = Path(sys.executable).parent
    with log.open("w") as out:
        proc = subprocess.run(
            [str(bin_dir / "ansible-playbook"), "-i", "inventory/onebox", playbook, *extra],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
    return proc


def recap_changes(log: Path) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", log.read_text(), re.M)
    }


@pytest.fixture(scope="session")
def homelab_site(kube: Kube, onebox_logs: Path) -> Path:
    """site.yml on onebox, from the cluster make onebox leaves (master1 tainted)."""
    log = onebox_logs / "site-1.log"
    started = time.monotonic()
    proc = ansible_playbook("site.yml", log)
    assert proc.returncode == 0, f"site.yml on onebox ({log}):\n{log.read_text()[-5000:]}"
    print(f"site.yml on onebox: {time.monotonic() - started:.0f}s", file=sys.stderr)
    return log


def test_site_yml_provisions_and_verifies_the_gateway_on_onebox(
    kube: Kube, homelab_site: Path
) -> None:
    out = homelab_site.read_text()
    assert re.search(r"(\d+) of \1 checks passed", out), out[-3000:]
    taints = kube.json("get", "node", "master1")["spec"].get("taints") or []
    assert not [t for t in taints if t["key"] == "node-role.kubernetes.io/control-plane"]
    pods = kube.json(
        "get",
        "pods",
        f"--namespace={HOMELAB_NAMESPACE}",
        f"--selector={registry.GATEWAY_POD_SELECTOR}",
    )["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["worker1", "worker2"]


def test_a_second_site_yml_changes_nothing(homelab_site: Path, onebox_logs: Path) -> None:
    log = onebox_logs / "site-2.log"
    proc = ansible_playbook("site.yml", log)
    assert proc.returncode == 0, log.read_text()[-5000:]
    changes = recap_changes(log)
    assert set(changes) == {"localhost", *NODES} and not any(changes.values()), changes


def test_istio_from_a_chart_repository_changes_nothing_the_local_charts_installed(
    homelab_site: Path, onebox_logs: Path, tmp_path: Path
) -> None:
    """The homelab's chart source, on onebox: the pinned module's charts served as a
    chart repository on loopback at the version they carry. The preflight looks them up
    there, and the istio role installs them by name through the repository's index
    (read afresh, review defect 4): the same charts and values as the local source
    installed, so helm changes nothing."""
    built = json.loads(Path(INVENTORY["onebox_state_dir"], "built.json").read_text())
    charts = Path(built["istio_charts"])
    version = yaml.safe_load((charts / "base" / "Chart.yaml").read_text())["version"]
    repo = ChartRepo(Path(built["bin"]["helm"]) / "helm", tmp_path)
    log = onebox_logs / "site-istio-repository.log"
    try:
        repo.publish(charts / "base", charts / "istio-control" / "istio-discovery")
        source = {
            "istio_chart_source": "repository",
            "istio_chart_repo_url": repo.url,
            "istio_version": version,
        }
        proc = ansible_playbook("site.yml", log, "--tags", "charts,istio", "-e", json.dumps(source))
    finally:
        repo.close()
    out = log.read_text()
    assert proc.returncode == 0, out[-5000:]
    # the preflight's lookup and the role's own, both through the repository
    assert out.count("TASK [istio : Look up the pinned charts in the repository]") == 2, out[-5000:]
    assert "Install istiod, and no default ingress gateway" in out
    changes = recap_changes(log)
    assert changes and not any(changes.values()), changes


def lb_runtime(host: str, command: str, log: Path) -> None:
    """One command to `host`'s HAProxy runtime API, over SSH as the playbooks reach it."""
    bin_dir = Path(sys.executable).parent
    script = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(sys.argv[2].encode()+b'\\n'); print(s.recv(4096).decode())"
    )
    with log.open("a") as out:
        subprocess.run(
            [
                str(bin_dir / "ansible"),
                "-i",
                "inventory/onebox",
                host,
                "--become",
                "-m",
                "ansible.builtin.command",
                "-a",
                json.dumps({"argv": ["python3", "-c", script, "/run/haproxy/admin.sock", command]}),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=True,
        )


def test_every_pitfall_made_on_the_cluster_is_named_with_its_fix(
    kube: Kube, homelab_site: Path, onebox_logs: Path
) -> None:
    """The pitfalls the local verify test breaks, made for real on onebox: a Gateway
    selector that matches no pod, `externalTrafficPolicy: Cluster`, master1 tainted
    again with 3 replicas under required anti-affinity, and a worker's HAProxy server
    in maintenance. verify.yml fails each by name, with its fix; then site.yml puts
    the cluster back and its verify passes again."""
    names, ns = registry.OBJECTS, f"--namespace={HOMELAB_NAMESPACE}"
    taint = "node-role.kubernetes.io/control-plane:NoSchedule"
    lb = HOMELAB["experiment_lb_host"]
    log = onebox_logs / "verify-pitfalls.log"
    try:
        selector = {"spec": {"selector": {"istio": "ingressgateway"}}}
        kube.run(
            "patch",
            "gateways.networking.istio.io",
            names.gateway,
            ns,
            "--type=merge",
            f"--patch={json.dumps(selector)}",
        )
        policy = {"spec": {"externalTrafficPolicy": "Cluster"}}
        kube.run(
            "patch",
            "service",
            names.gateway_deployment,
            ns,
            "--type=merge",
            f"--patch={json.dumps(policy)}",
        )
        kube.run("taint", "node", "master1", taint)
        kube.run("scale", "deployment", names.gateway_deployment, ns, "--replicas=3")
        lb_runtime(lb, f"disable server {registry.HAPROXY_BACKEND}/worker2", log)
        proc = ansible_playbook("playbooks/verify.yml", log)
    finally:
        lb_runtime(lb, f"enable server {registry.HAPROXY_BACKEND}/worker2", log)
        kube.run("scale", "deployment", names.gateway_deployment, ns, "--replicas=2")
        repair_log = onebox_logs / "site-after-pitfalls.log"
        repaired = ansible_playbook("site.yml", repair_log)
    out = log.read_text()
    assert proc.returncode != 0, out[-5000:]
    report = json.loads(Path(re.findall(r"report: (\S+\.json)", out)[-1]).read_text())
    found = {c["name"]: c for c in report["checks"]}
    failed = {name for name, c in found.items() if c["result"] == "fail"}
    assert failed == {
        "gateway_selector_matches_pods",
        "envoy_listens_on_gateway_port",
        "health_check_is_node_local",
        "rollout_has_seats",
        "lb_sees_every_worker_up",
    }, out[-5000:]
    assert "Cluster-policy trap" in found["health_check_is_node_local"]["fix"]
    assert "master1 (no pod): 200" in found["health_check_is_node_local"]["detail"]
    assert f"{lb}/worker2 MAINT" in found["lb_sees_every_worker_up"]["detail"]
    assert all(found[name]["fix"] for name in failed)
    # site.yml undoes what the cluster drifted to (the selector, the policy, the
    # taint) and ends with a verify that passes
    assert repaired.returncode == 0, repair_log.read_text()[-5000:]
    assert recap_changes(repair_log)["localhost"] > 0
    assert re.search(r"(\d+) of \1 checks passed", repair_log.read_text())
    pods = kube.json("get", "pods", ns, f"--selector={registry.GATEWAY_POD_SELECTOR}")["items"]
    running = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
    assert sorted(p["spec"]["nodeName"] for p in running) == ["worker1", "worker2"]


def test_port_forwards_do_not_disturb_calls_on_the_shared_client(homelab_site: Path) -> None:
    """kubernetes.stream.portforward swaps call_api on its client for its handshake: with
    one shared client, list calls made meanwhile went out as port-forwards and failed
    (`Missing required parameter ports`), and the homelab runner died before finalize."""
    from kubernetes import client, config

    from runbook.collectors import kube as kube_collectors

    config.load_kube_config(context=CONTEXT)
    core = client.CoreV1Api()
    pods = core.list_namespaced_pod(
        HOMELAB_NAMESPACE, label_selector=registry.GATEWAY_POD_SELECTOR
    ).items
    admins = [
        kube_collectors.PortForwardAdmin(core, HOMELAB_NAMESPACE, p.metadata.name) for p in pods
    ]
    errors: list[BaseException] = []
    done = threading.Event()

    def forward() -> None:
        while not done.is_set():
            for admin in admins:
                try:
                    admin.get_json("/server_info", {})
                except Exception as exc:  # any failure is the finding
                    errors.append(exc)

    threads = [threading.Thread(target=forward) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(60):
            core.list_namespaced_pod(HOMELAB_NAMESPACE)
    except Exception as exc:  # the failure this test is about
        errors.append(exc)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert errors == []
    # a pod that is not there: an OSError, as an unreachable local admin is, not an
    # ApiException(status=0) that ended the gauge poll silently
    gone = kube_collectors.PortForwardAdmin(core, HOMELAB_NAMESPACE, "no-such-pod")
    with pytest.raises(OSError, match="no-such-pod"):
        gone.get_json("/stats", {})


def pause_pod(kube: Kube, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pause pod on worker1 that goes at once when deleted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": "worker1",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "pause", "image": kube.pause}],
        },
    }


def test_the_pod_watch_sees_a_deletion_between_two_windows(kube: Kube) -> None:
    """Each watch window used to start from now: a pod deleted between two windows had
    no DELETED event, and the run's pod_gone stayed empty. The gap is made real by
    holding the second window's call until the deletion has happened."""
    from kubernetes import client, config

    from runbook.artifacts.events import EventLog
    from runbook.collectors import kube as kube_collectors

    name = "watched"
    kube.apply(pause_pod(kube, name, {"watch": "me"}))
    config.load_kube_config(context=CONTEXT)
    core = client.CoreV1Api()
    calls = 0
    deleted = threading.Event()

    @functools.wraps(core.list_namespaced_pod)  # the watch reads its return type
    def list_pods(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # the list, one window, then between the windows: delete the
            # pod, and wait until it is gone
            kube.run(*kube.ns("delete", "pod", name, "--wait=true"), timeout=60)
            deleted.set()
        return core.list_namespaced_pod(*args, **kwargs)

    api = types.SimpleNamespace(list_namespaced_pod=list_pods)
    out = Path(tempfile.mkdtemp()) / "kubelet.jsonl"
    log = EventLog(out)
    stop = threading.Event()
    watcher = threading.Thread(
        target=kube_collectors.watch_pods, args=(api, NAMESPACE, "watch=me", log, stop)
    )
    watcher.start()
    try:
        assert deleted.wait(kube_collectors.WATCH_WINDOW_S + 60)
        wait_for(
            "the DELETED event",
            lambda: '"pod_terminated"' in out.read_text(),
            kube_collectors.WATCH_WINDOW_S * 2 + 10,
        )
    finally:
        stop.set()
        watcher.join(kube_collectors.WATCH_WINDOW_S + 10)
        log.close()


def test_the_pod_watch_reports_no_change_from_before_it_started(kube: Kube) -> None:
    """A watch from no version announces each pod at that pod's own version; resuming
    the next window from it replayed every later change, so a pod deleted before the
    watch began was reported terminated during the run (seen on onebox, in a rollout's
    run: the pod the placement step had moved)."""
    from kubernetes import client, config

    from runbook.artifacts.events import EventLog
    from runbook.collectors import kube as kube_collectors

    def pod(name: str) -> dict[str, Any]:
        return pause_pod(kube, name, {"watch": "replay"})

    kube.apply(pod("older"))  # listed at its own, older version
    kube.run(*kube.ns("wait", "--for=condition=Ready", "pod/older", "--timeout=60s"), timeout=90)
    kube.apply(pod("gone-before"))
    kube.run(*kube.ns("delete", "pod", "gone-before", "--wait=true"), timeout=60)
    config.load_kube_config(context=CONTEXT)
    out = Path(tempfile.mkdtemp()) / "kubelet.jsonl"
    log = EventLog(out)
    stop = threading.Event()
    watcher = threading.Thread(
        target=kube_collectors.watch_pods,
        args=(client.CoreV1Api(), NAMESPACE, "watch=replay", log, stop),
    )
    watcher.start()
    try:
        time.sleep(kube_collectors.WATCH_WINDOW_S * 2 + 2)  # into the third window
    finally:
        stop.set()
        watcher.join(kube_collectors.WATCH_WINDOW_S + 10)
        log.close()
        kube.run(*kube.ns("delete", "pod", "older", "--wait=false"), timeout=60)
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    # older announced (ready), and nothing of the pod gone before the watch began
    assert {e["pod"] for e in seen} == {"older"}, seen


@pytest.fixture(scope="session")
def onebox_experiment(
    homelab_site: Path, onebox_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`make experiment TARGET=onebox REPEATS=1`: site.yml converges the cluster, then
    each mode in turn through one run-experiment.yml on inventory/onebox (the flip, then
    its inflight and its steady run), the runs judged and compared as the local lab's
    are. Its artifacts folder."""
    artifacts = tmp_path_factory.mktemp("onebox-artifacts")
    make_experiment_on_onebox(artifacts, onebox_logs / "make-experiment-onebox.log")
    return artifacts


def make_experiment_on_onebox(artifacts: Path, log: Path, *variables: str) -> None:
    """`make experiment TARGET=onebox REPEATS=1 <variables>` into `artifacts`, its
    output in `log`; how long it took on stderr."""
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "experiment",
                "TARGET=onebox",
                "REPEATS=1",
                *variables,
                f"ARTIFACTS={artifacts}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=3600,
        )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"{log}:\n{log.read_text()[-5000:]}"
    print(f"make experiment TARGET=onebox {' '.join(variables)}: {took:.0f}s", file=sys.stderr)


def test_make_experiment_on_onebox_compares_every_mode(onebox_experiment: Path) -> None:
    (doc_path,) = onebox_experiment.glob("comparison-*.json")
    doc = json.loads(doc_path.read_text())
    assert doc["lab"] == "onebox"
    text = doc_path.with_suffix(".html").read_text()
    for mode in registry.MODES:
        assert mode in text


@pytest.mark.parametrize("mode", list(registry.MODES))
def test_a_mode_s_runs_share_one_flip_and_keep_their_own_records(
    onebox_experiment: Path, mode: str
) -> None:
    """A mode's runs in one run-experiment.yml (experiment_runs): the mode flipped once,
    then each run with its own HAProxy collectors: every request HAProxy logged in a
    run's files is one that run sent."""
    log = (ROOT / ".lab" / "onebox" / mode / "runs-1.log").read_text()
    assert log.count("PLAY [Flip the gateway to the mode") == 1, log[-3000:]
    assert "start run 1 of 2 (inflight)" in log and "start run 2 of 2 (steady)" in log
    for scenario in registry.DEFAULT_SCENARIOS:
        (run_dir,) = onebox_experiment.glob(f"*-{scenario}-{mode}")
        sent = {json.loads(line)["request_id"] for line in (run_dir / "requests.raw.jsonl").open()}
        logged = {
            e["rid"]
            for worker in ("worker1", "worker2")
            for e in map(json.loads, (run_dir / "collected" / f"haproxy-{worker}.jsonl").open())
            if e["kind"] == "request_log" and e.get("rid")
        }
        assert logged and logged <= sent, sorted(logged - sent)[:5]
        assert json.loads((run_dir / "summary.json").read_text())["valid"]


@pytest.mark.parametrize("mode", list(registry.MODES))
def test_every_mode_s_experiment_runs_on_onebox_through_the_homelab_runner(
    onebox_experiment: Path, mode: str
) -> None:
    """Each mode's run of `make experiment TARGET=onebox`: the mode flipped, load
    through worker1's HAProxy, a gateway pod on worker2 deleted, every hop's records
    joined."""
    (run_dir,) = onebox_experiment.glob(f"*-inflight-{mode}")
    for name in (
        "plan.json",
        "termination.json",
        "requests.raw.jsonl",
        "requests.jsonl",
        "events.jsonl",
        "summary.json",
        "journal.json",
        "report.html",
    ):
        assert (run_dir / name).is_file(), name
    collected = {p.name for p in (run_dir / "collected").iterdir()}
    assert {
        "haproxy-worker1.jsonl",
        "haproxy-worker2.jsonl",
        "kubelet.jsonl",
        "endpointslices.jsonl",
        "envoy.jsonl",
        "pods.jsonl",
    } <= collected
    summary = json.loads((run_dir / "summary.json").read_text())
    journal = json.loads((run_dir / "journal.json").read_text())
    assert journal["target"] == "homelab"
    assert summary["valid"], summary["invalid_reasons"]
    assert summary["mode"] == mode and summary["profile"] == "quick"
    # every request seen at every hop: HAProxy, Envoy and the backend (their logs
    # streamed from the pods, the replacement's included)
    assert summary["missing_hops"] == {}, summary["missing_hops"]
    # HAProxy runs on worker1, and kube-proxy sends worker1's own traffic to its NodePort
    # to any ready gateway: a request is the victim's by Envoy's line, whatever server
    # HAProxy named (summary served_off_lb_server counts them)
    requests = [json.loads(line) for line in (run_dir / "requests.jsonl").open()]
    victim = summary["terminated_pod"]
    t_ms = json.loads((run_dir / "termination.json").read_text())["ms"]
    on_victim = [
        r
        for r in requests
        if r["served_by"]["gateway_pod"] == victim
        and r["start_ms"] < t_ms
        and (r["end_ms"] or t_ms + 1) > t_ms
    ]
    assert on_victim and all(r["exposed"] for r in on_victim), on_victim
    timings = summary["timings_s"]
    assert timings["termination_to_pod_gone"] is not None
    assert timings["termination_to_lb_down"] is not None
    # the gauge read through the port-forward: Istio's name for it matched; and the
    # victim's replacement's too, from when it ran
    gauge = [json.loads(line) for line in (run_dir / "collected/envoy.jsonl").open()]
    assert any(e["value"] for e in gauge), gauge
    assert len({e["pod"] for e in gauge}) >= 3, {e["pod"] for e in gauge}
    if registry.mode(mode).prestop in ("graceful-drain", "ordered-drain"):  # the script
        assert timings["prestop"] is not None
        events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
        unknown = [e for e in events if e["source"] == "prestop" and e["msg"] == "active_unknown"]
        assert unknown == []  # the drain script read the gauge too
    if mode == "ordered":
        # nothing fails: not even through the LB's own node, whose check could reach the
        # victim's hc until kube-proxy dropped the endpoint (ENDPOINT_SYNC_WAIT,
        # docs/modes.md)
        assert summary["lost_exposed"] == 0, summary["failed"]
        assert summary["failed_total"] == 0, summary["failed"]


def test_a_homelab_run_that_cannot_write_stops_before_the_deletion_saying_why(
    onebox_experiment: Path, tmp_path: Path
) -> None:
    """The homelab runner's writers (the API collectors, the log streams, the load's
    records) report a failed write to the run, which stops at once: exit 1, one line
    naming the file and the room left, its result file `failed` saying the same, the
    victim not deleted. Its run directory is on a small tmpfs filled mid-load."""
    # the last run's replacement is on master1: the gateway role's placement alone
    # (tasks_from: place, as before each experiment run) puts one on each worker
    play = tmp_path / "place.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [str(ROOT / "playbooks/vars/experiment-gateway.yml")],
                    "tasks": [
                        {
                            "ansible.builtin.include_role": {
                                "name": "gateway",
                                "tasks_from": "place",
                            }
                        }
                    ],
                }
            ]
        )
    )
    placed = ansible_playbook(str(play), tmp_path / "place.log", "-e", "mode=unused")
    assert placed.returncode == 0, (tmp_path / "place.log").read_text()[-3000:]
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        from kubernetes import client, config

        config.load_kube_config(context=CONTEXT)
        core = client.CoreV1Api()
        running = [
            p
            for p in core.list_namespaced_pod(
                HOMELAB_NAMESPACE, label_selector=registry.GATEWAY_POD_SELECTOR
            ).items
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
        ]
        mode = running[0].metadata.labels["mode"]
        run_dir, result_file = mount / "run", tmp_path / "result.json"
        run_dir.mkdir()
        worker1 = HOSTS["workers"]["hosts"]["worker1"]["ansible_host"]
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "runbook.runners.homelab"),
                f"--context={CONTEXT}",
                f"--namespace={HOMELAB_NAMESPACE}",
                f"--url=https://{worker1}",
                "--lb=worker1",
                "--workers=worker1,worker2",
                f"--mode={mode}",
                "--scenario=steady",
                "--profile=quick",
                f"--run-dir={run_dir}",
                f"--result-file={result_file}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "victim <pod> on <node>": the load starts now
        assert first.startswith("victim "), first + proc.stdout.read()[-3000:]
        victim = first.split()[1]
        time.sleep(1.5)
        fill(mount)
        filled = time.monotonic()
        out = first + proc.stdout.read()
        code = proc.wait(60)
        ended = time.monotonic()
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)
    assert code == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    said = [ln for ln in out.splitlines() if ln.startswith("runbook.runners.homelab: failed: ")]
    assert len(said) == 1, out[-3000:]
    assert "cannot write " in said[0] and "No space left on device (" in said[0], said
    assert " free of 8.0 MiB there)" in said[0], said
    assert ended - filled < 15, ended - filled
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed" and result["reason"].startswith("cannot write ")
    # stopped before the termination (5 s into the load): the victim was not deleted
    pod = core.read_namespaced_pod(victim, HOMELAB_NAMESPACE)
    assert pod.metadata.deletion_timestamp is None


def evictable_deployment(kube: Kube, name: str, ready_after_s: int) -> list[dict[str, Any]]:
    """Two agnhost replicas, ready `ready_after_s` after they start, and a
    PodDisruptionBudget with the gateway's floor (minAvailable 1)."""
    container = {
        "name": "netexec",
        "image": kube.agnhost,
        "imagePullPolicy": "IfNotPresent",
        "args": ["netexec", "--http-port=8080"],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080},
            "initialDelaySeconds": ready_after_s,
            "periodSeconds": 1,
        },
    }
    labels = {"app": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
        },
    ]


def evict(kube: Kube, pod: str) -> subprocess.CompletedProcess[str]:
    """The Eviction API, as kubectl drain calls it, for one pod."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": NAMESPACE},
    }
    return subprocess.run(
        kube.argv("create", f"--raw=/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction", "-f", "-"),
        input=json.dumps(body),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_budget_refuses_a_second_eviction_until_the_first_replacement_is_ready(
    kube: Kube,
) -> None:
    """What a drain of both workers rests on: with minAvailable 1 of 2, the Eviction API
    admits one eviction, refuses the next (429) while the replacement is not ready, and
    admits it once the replacement is."""
    name = "evictable"
    ready_after_s = 6
    kube.apply(evictable_deployment(kube, name, ready_after_s))
    try:
        kube.run(*kube.ns("rollout", "status", f"deployment/{name}", "--timeout=120s"), timeout=150)
        wait_for(
            "the budget to allow one disruption",
            lambda: (
                kube.json(*kube.ns("get", "pdb", name))["status"].get("disruptionsAllowed") == 1
            ),
            30,
        )
        first, second = sorted(
            p["metadata"]["name"]
            for p in kube.json(*kube.ns("get", "pods", f"--selector=app={name}"))["items"]
        )
        admitted = evict(kube, first)
        assert admitted.returncode == 0, admitted.stderr
        refused = evict(kube, second)
        refused_at = time.monotonic()
        assert refused.returncode != 0
        assert "disruption budget" in refused.stderr, refused.stderr

        def ready_pods() -> int:
            pods = kube.json(*kube.ns("get", "pods", f"--selector=app={name}"))["items"]
            return sum(
                1
                for p in pods
                if "deletionTimestamp" not in p["metadata"]
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
            )

        def second_admitted() -> bool:
            return evict(kube, second).returncode == 0

        wait_for("the second eviction to be admitted", second_admitted, 60, every=0.5)
        blocked_s = time.monotonic() - refused_at
        # refused until the replacement had passed its readiness probe, not before
        assert blocked_s >= ready_after_s - 2, blocked_s
        assert ready_pods() >= 1
        print(f"the second eviction was refused for {blocked_s:.1f}s", file=sys.stderr)
    finally:
        kube.run(*kube.ns("delete", "deployment,pdb", name, "--wait=false"))


@pytest.fixture(scope="session")
def onebox_events(
    homelab_site: Path, onebox_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`make experiment TARGET=onebox MODES=ordered SCENARIOS=steady
    EVENTS=drain,scale-down,rollout REPEATS=1`: the events beyond a deletion, each
    through the homelab runner, judged and compared as the deletion's runs are. Its
    artifacts."""
    artifacts = tmp_path_factory.mktemp("onebox-events")
    make_experiment_on_onebox(
        artifacts,
        onebox_logs / "make-experiment-onebox-events.log",
        "MODES=ordered",
        "SCENARIOS=steady",
        "EVENTS=drain,scale-down,rollout",
    )
    return artifacts


def event_run(artifacts: Path, event: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The one run of `event`: its folder, summary and the runner's experiment events."""
    (run_dir,) = artifacts.glob(f"*-steady-{event}-ordered")
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [
        e for e in map(json.loads, (run_dir / "events.jsonl").open()) if e["source"] == "experiment"
    ]
    return run_dir, summary, events


def test_the_comparison_sets_each_event_beside_the_others(onebox_events: Path) -> None:
    (doc_path,) = onebox_events.glob("comparison-*.json")
    doc = json.loads(doc_path.read_text())
    assert list(doc["scenarios"]) == ["steady@drain", "steady@scale-down", "steady@rollout"]
    for case in doc["scenarios"].values():
        assert list(case["modes"]) == ["ordered"]
    page = doc_path.with_suffix(".html").read_text()
    assert "steady@drain" in page and "steady@scale-down" in page


def test_a_drain_cordons_the_victim_s_node_evicts_its_gateway_and_uncordons_it(
    kube: Kube, onebox_events: Path
) -> None:
    run_dir, summary, events = event_run(onebox_events, "drain")
    assert summary["event"] == "drain" and summary["valid"], summary["invalid_reasons"]
    victim = summary["terminated_pod"]
    assert summary["terminated_pods"] == [victim]
    term = json.loads((run_dir / "termination.json").read_text())
    assert term["event"] == "drain" and term["node"] == "worker2"
    kinds = [e["kind"] for e in events]
    assert kinds.index("termination_issued") < kinds.index("cordoned") < kinds.index("evicted")
    evicted = next(e for e in events if e["kind"] == "evicted")
    assert evicted["pod"] == victim
    # put back when the run ended: the node takes pods again
    assert not kube.json("get", "node", "worker2")["spec"].get("unschedulable")
    # the timing model's budget is on the cluster, and it admitted the eviction
    pdb = kube.json("get", "pdb", registry.OBJECTS.gateway_deployment, "-n", HOMELAB_NAMESPACE)
    assert pdb["spec"]["minAvailable"] == 1
    assert summary["lost_exposed"] == 0 and summary["failed_total"] == 0, summary["failed"]


def test_a_scale_down_deletes_the_pod_the_replicaset_ranks_lowest_and_restores_replicas(
    kube: Kube, onebox_events: Path
) -> None:
    run_dir, summary, events = event_run(onebox_events, "scale-down")
    assert summary["event"] == "scale-down" and summary["valid"], summary["invalid_reasons"]
    picked = next(e for e in events if e["kind"] == "picked")
    assert picked["pod"] == summary["terminated_pod"]
    scaled = next(e for e in events if e["kind"] == "scaled")
    assert (scaled["from"], scaled["to"]) == (2, 1)
    assert json.loads((run_dir / "termination.json").read_text())["node"] == "worker2"
    deployment = kube.json(
        "get", "deployment", registry.OBJECTS.gateway_deployment, "-n", HOMELAB_NAMESPACE
    )
    assert deployment["spec"]["replicas"] == 2
    pods = kube.json(
        "get", "pods", "-n", HOMELAB_NAMESPACE, f"--selector={registry.GATEWAY_POD_SELECTOR}"
    )["items"]
    annotated = [
        p["metadata"]["name"]
        for p in pods
        if "controller.kubernetes.io/pod-deletion-cost" in p["metadata"].get("annotations", {})
    ]
    assert annotated == []
    assert summary["lost_exposed"] == 0 and summary["failed_total"] == 0, summary["failed"]


def test_a_rollout_replaces_both_gateways_one_after_another_the_victim_first(
    kube: Kube, onebox_events: Path
) -> None:
    run_dir, summary, events = event_run(onebox_events, "rollout")
    assert summary["event"] == "rollout" and summary["valid"], summary["invalid_reasons"]
    term = json.loads((run_dir / "termination.json").read_text())
    # the victim (worker2's, off the LB's node) first, then the LB's own node's
    assert [(p["pod"], p["node"]) for p in term["pods"]] == [
        (term["pod"], "worker2"),
        (summary["terminated_pods"][1], "worker1"),
    ]
    first, second = summary["terminations"]
    # the second old pod goes once worker2's replacement has been ready minReadySeconds
    assert second["at_s"] > first["at_s"] + first["gone_after_s"]
    kinds = [e["kind"] for e in events]
    assert kinds.index("termination_issued") < kinds.index("restarted")
    assert [e["pod"] for e in events if e["kind"] == "old_pod_terminating"] == [
        first["pod"],
        second["pod"],
    ]
    # each pod's own sequence: worker2 out of HAProxy's rotation, worker1 (the LB's
    # node, its traffic to any ready gateway through kube-proxy) not
    assert first["phases_s"]["lb_down"] is not None and first["exposed"] > 0
    assert second["phases_s"]["lb_down"] is None
    plan = json.loads((run_dir / "plan.json").read_text())
    assert summary["timings_s"]["event_to_last_pod_gone"] < plan["budget"]["rollout_worst_s"]
    # the rollout's result stays: new pods from the restarted template, unannotated
    deployment = kube.json(
        "get", "deployment", registry.OBJECTS.gateway_deployment, "-n", HOMELAB_NAMESPACE
    )
    template = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in template
    assert deployment["spec"]["minReadySeconds"] == plan["budget"]["gateway_min_ready_s"]
    assert summary["lost_exposed"] == 0 and summary["failed_total"] == 0, summary["failed"]


def leftovers() -> list[str]:
    """Everything of onebox's that could outlive it on this machine."""
    found: list[str] = []
    state = INVENTORY["onebox_state_dir"]
    bridge = INVENTORY["onebox_bridge"]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(
                (b"systemd-nspawn", b"kubelet", b"containerd", b"kube-apiserver")
            ):
                found.append(f"process {pid}: {cmd[0].decode()}")
    found += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if state in line.split()[4]
    ]
    found += [f"netns {n}" for n in os.listdir("/run/netns")] if Path("/run/netns").is_dir() else []
    found = [f for f in found if not f.startswith("netns ") or f.startswith("netns onebox-")]
    links = json.loads(
        subprocess.run(
            ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
    )
    found += [
        f"link {i['ifname']}"
        for i in links
        if i["ifname"] == bridge or i["ifname"].startswith("obv-")
    ]
    for c in CGROUP_CONTROLLERS:
        root = Path("/sys/fs/cgroup") / c
        found += [f"cgroup {p}" for p in root.rglob("onebox-*") if p.is_dir()]
    if Path(state).exists():
        found.append(f"folder {state}")
    if subprocess.run(["which", "iptables-save"], capture_output=True).returncode == 0:
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        found += [
            f"iptables {ln}"
            for ln in rules.splitlines()
            if "198.18." in ln or "198.19." in ln or bridge in ln
        ]
    return found


def test_make_onebox_down_leaves_nothing_behind(kube: Kube, onebox_logs: Path) -> None:
    sysctls_before = Path(INVENTORY["onebox_state_dir"], "host-sysctls").read_text().split()
    log = onebox_logs / "make-onebox-down.log"
    started = time.monotonic()
    proc = make("onebox-down", log, timeout=300)
    took = time.monotonic() - started
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert leftovers() == []
    for line in sysctls_before:
        name, value = line.split("=")
        assert Path("/proc/sys", name.replace(".", "/")).read_text().strip() == value, name
    contexts = subprocess.run(
        [str(kube.kubectl), "config", "get-contexts", "--output=name"],
        capture_output=True,
        text=True,
    ).stdout
    assert CONTEXT not in contexts.split()
    print(f"make onebox-down: {took:.0f}s", file=sys.stderr)
