"""The local lab's cluster: two workers on loopback, the mode's gateway and backend pods,
the NodePorts, and the reconcile loop that publishes EndpointSlice conditions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..artifacts.events import CollectedDir
from .envoy_bootstrap import Upstream, gateway_bootstrap
from .kubelet import Pod, program_for
from .kubeproxy import NodePort, endpoint_conditions
from .manifests import Manifests, seconds

PY = sys.executable


@dataclass(frozen=True, slots=True)
class Topology:
    """Loopback addresses of one isolated lab: 127.<30+index>.<role>.<n>."""

    index: int

    @property
    def net(self) -> str:
        if not 1 <= self.index <= 200:
            raise ValueError(f"lab index {self.index} must be 1..200")
        return f"127.{30 + self.index}"

    def node_ip(self, n: int) -> str:
        return f"{self.net}.0.{n}"

    @property
    def haproxy_ip(self) -> str:
        return f"{self.net}.0.100"

    def gateway_pod_ip(self, n: int) -> str:
        return f"{self.net}.1.{n}"

    def backend_pod_ip(self, n: int) -> str:
        return f"{self.net}.2.{n}"


def pods_dir(run_dir: Path) -> Path:
    """Where a run's pods work (their logs, the Envoy configs): every container and
    preStop hook of the run has it as its working directory."""
    return run_dir / "lab"


def kill_leftover_pods(run_dir: Path) -> list[int]:
    """SIGKILL the process group of every process still working in the run's pods
    folder, and say which: the last resort when the runner that owned them was killed
    before its cleanup (each container runs in a process group of its own, so nothing
    else reaches them)."""
    where = str(pods_dir(run_dir))
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == where or cwd.startswith(where + "/"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(int(proc.name)), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


WORKERS = ("worker1", "worker2")
#: Every node kube-proxy runs on: the workers, and the untainted control plane, which
#: has the NodePorts but (nodeAffinity) no gateway pod: the node that shows whether
#: externalTrafficPolicy keeps a health check node-local.
NODES = (*WORKERS, "master1")


class LabCluster:
    """Two workers, a gateway pod on each, two backend pods, NodePorts on each worker."""

    def __init__(
        self,
        topology: Topology,
        manifests: Manifests,
        lab_dir: Path,
        collected: CollectedDir,
        on_log_line: Callable[[str, str, str], None] | None = None,
        namespace: str = "service-a",
    ) -> None:
        self.topology = topology
        self.manifests = manifests
        self.lab_dir = lab_dir
        # the same files the homelab's collectors write (lab.collectors.kube)
        self.kubelet_events = collected.log("kubelet")
        self.endpoint_events = collected.log("endpointslices")
        self.proxy_events = collected.log("kube-proxy")
        self.on_log_line = on_log_line
        self.namespace = namespace
        (lab_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.http = aiohttp.ClientSession()
        m = manifests
        self.backend_pods = [
            Pod(
                self,
                m.backend,
                f"{m.backend.deployment}-{i + 1}",
                WORKERS[i % 2],
                topology.backend_pod_ip(i + 1),
            )
            for i in range(m.backend.replicas)
        ]
        mode = m.gateway.labels.get("mode", "gw")
        self.gateway_pods = [
            Pod(
                self,
                m.gateway,
                f"{m.gateway.deployment}-{mode}-{node}",
                node,
                topology.gateway_pod_ip(i + 1),
            )
            for i, node in enumerate(WORKERS[: m.gateway.replicas])
        ]
        self.node_ports = [
            NodePort(self, node, topology.node_ip(i + 1), node_port, target)
            for i, node in enumerate(NODES)
            for node_port, target in m.node_ports.items()
        ]
        self._conditions: dict[str, dict[str, bool]] = {}
        self._reconciler: asyncio.Task[None] | None = None

    def node_ip(self, node: str) -> str:
        return self.topology.node_ip(NODES.index(node) + 1)

    def selected_by_gateway(self, pod: Pod) -> bool:
        """istiod pushes the Gateway's listeners only to proxies its selector matches."""
        selector = self.manifests.gateway_selector or {}
        return bool(selector) and selector.items() <= pod.labels.items()

    def proxy_argv(self, pod: Pod) -> list[str]:
        m = self.manifests
        config = gateway_bootstrap(
            listen_host=pod.ip,
            listen_port=m.gateway_port,
            admin_host=pod.ip,
            admin_port=15000,
            upstreams=[Upstream(p.ip, m.backend_port) for p in self.backend_pods],
            route_timeout_s=m.route_timeout_s,
            with_listener=self.selected_by_gateway(pod),
        )
        path = self.lab_dir / f"envoy-{pod.name}.json"
        path.write_text(json.dumps(config, indent=1))
        status_port = next(
            c.readiness.port
            for c in pod.template.containers
            if program_for(c.image) == "istio-proxy" and c.readiness
        )
        return [
            PY,
            "-m",
            "lab.localcluster.pilot_agent",
            "--config",
            str(path),
            "--admin",
            f"http://{pod.ip}:15000",
            "--status",
            f"{pod.ip}:{status_port}",
            "--drain-time-s",
            str(int(seconds(m.proxy_config.get("drainDuration", "45s")))),
            "--termination-drain-s",
            str(seconds(m.proxy_config.get("terminationDrainDuration", "5s"))),
        ]

    async def pump(
        self, proc: asyncio.subprocess.Process, log: Path, pod: str, container: str
    ) -> None:
        """Container output to its log file, each line also to `on_log_line` (the
        collectors decide what a line means, as they do with the homelab's log stream)."""
        assert proc.stdout is not None
        with log.open("ab", buffering=0) as out:
            while line := await proc.stdout.readline():
                out.write(line)
                if self.on_log_line is not None:
                    self.on_log_line(pod, container, line.decode(errors="replace"))

    async def start(self) -> None:
        for pod in self.backend_pods:
            await pod.start()
        for pod in self.gateway_pods:
            await pod.start()
        self._reconciler = asyncio.create_task(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        while True:
            for pod in self.gateway_pods:
                cond = endpoint_conditions(pod)
                if self._conditions.get(pod.name) != cond and not pod.terminated.is_set():
                    self._conditions[pod.name] = cond
                    self.endpoint_events.emit(
                        "endpointslice", "conditions", pod=pod.name, node=pod.node, **cond
                    )
            for np in self.node_ports:
                try:
                    await np.reconcile()
                except OSError as exc:
                    self.proxy_events.emit("kube-proxy", "error", node=np.node, error=str(exc))
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if all(p.ready for p in self.backend_pods + self.gateway_pods):
                return
            await asyncio.sleep(0.1)
        not_ready = [
            f"{p.name}:{[c.spec.name for c in p.containers if not c.ready]}"
            for p in self.backend_pods + self.gateway_pods
            if not p.ready
        ]
        raise TimeoutError(f"pods not ready after {timeout}s: {', '.join(not_ready)}")

    def pod(self, name: str) -> Pod:
        for p in self.gateway_pods + self.backend_pods:
            if p.name == name:
                return p
        raise KeyError(name)

    async def stop(self) -> None:
        if self._reconciler:
            self._reconciler.cancel()
        for np in self.node_ports:
            await np.close()
        for pod in self.gateway_pods + self.backend_pods:
            await pod.kill()
        await self.http.close()
