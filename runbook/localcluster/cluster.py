"""The local lab's cluster: two workers on loopback, the mode's gateway and backend pods,
the NodePorts, and the reconcile loop that publishes EndpointSlice conditions."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ..artifacts.events import CollectedDir
from ..model import registry
from ..model.durations import duration_seconds
from . import pilot_agent
from .envoy_bootstrap import Upstream, gateway_bootstrap
from .kubelet import LogLineSink, Pod, PodEnvironment, program_for
from .kubeproxy import NodePort, endpoint_conditions
from .lablock import address_taken
from .manifests import ContainerSpec, Manifests
from .topology import NODES, WORKERS, Topology, pods_dir


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


class LabCluster:
    """Two workers, a gateway pod on each, two backend pods, NodePorts on each worker."""

    def __init__(
        self,
        topology: Topology,
        manifests: Manifests,
        work_dir: Path,
        collected: CollectedDir,
        on_log_line: LogLineSink | None = None,
        namespace: str = registry.OBJECTS.namespace,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.topology = topology
        self.manifests = manifests
        self.on_fault = on_fault
        self.work_dir = work_dir
        # the same files the homelab's collectors write (runbook.collectors.kube)
        kubelet_events = collected.log("kubelet")
        self.endpoint_events = collected.log("endpointslices")
        self.proxy_events = proxy_events = collected.log("kube-proxy")
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.http = aiohttp.ClientSession()
        # each node's kubelet: what its pods get from it
        self._where = where = {
            node: PodEnvironment(
                namespace=namespace,
                host_ip=topology.ip_of_node(node),
                work_dir=work_dir,
                events=kubelet_events,
                http=self.http,
                command=self.container_command,
                on_log_line=on_log_line,
                failures=collected.failures,
                on_fault=on_fault,
            )
            for node in NODES
        }
        m = manifests
        self.backend_pods = [
            Pod(
                where[WORKERS[i % 2]],
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
                where[node],
                m.gateway,
                f"{m.gateway.deployment}-{mode}-{node}",
                node,
                topology.gateway_pod_ip(i + 1),
            )
            for i, node in enumerate(WORKERS[: m.gateway.replicas])
        ]
        self.node_ports = [
            NodePort(
                node,
                topology.ip_of_node(node),
                node_port,
                target,
                endpoints=lambda: self.gateway_pods,
                traffic_policy=m.traffic_policy,
                events=proxy_events,
            )
            for node in NODES
            for node_port, target in m.node_ports.items()
        ]
        self._conditions: dict[str, dict[str, bool]] = {}
        self._reconciler: asyncio.Task[None] | None = None
        #: the nodes whose NodePort could not bind, said once each
        self._bind_faults: set[str] = set()

    def pod_environment(self, node: str) -> PodEnvironment:
        """What a pod on `node` gets from its kubelet (a test's extra pod uses it)."""
        return self._where[node]

    def selected_by_gateway(self, pod: Pod) -> bool:
        """istiod pushes the Gateway's listeners only to proxies its selector matches."""
        selector = self.manifests.gateway_selector or {}
        return bool(selector) and selector.items() <= pod.labels.items()

    def container_command(self, pod: Pod, spec: ContainerSpec) -> list[str]:
        """The command for a container's image: our app's module, or for istio-proxy
        the pilot-agent stand-in with the Envoy bootstrap istiod would have pushed."""
        program = program_for(spec.image)
        if program != "istio-proxy":
            # the container's own `python -m <module>` (the backend's gRPC service),
            # else the image's program
            return [sys.executable, "-m", spec.module or program]
        m = self.manifests
        config = gateway_bootstrap(
            listen_host=pod.ip,
            listen_port=m.gateway_port,
            admin_host=pod.ip,
            admin_port=registry.PORTS.envoy_admin,
            upstreams=[Upstream(p.ip, m.backend_port) for p in self.backend_pods],
            route_timeout_s=m.route_timeout_s,
            upstream_idle_s=m.upstream_idle_s,
            grpc_upstreams=[Upstream(p.ip, m.backend_grpc_port) for p in self.backend_pods]
            if m.backend_grpc_port
            else [],
            grpc_route_prefix=m.grpc_route_prefix,
            with_listener=self.selected_by_gateway(pod),
        )
        path = self.work_dir / f"envoy-{pod.name}.json"
        path.write_text(json.dumps(config, indent=1))
        if spec.readiness is None:
            raise ValueError(f"{pod.name}: istio-proxy has no readiness probe (its status port)")
        drain = m.proxy_config
        return pilot_agent.command(
            config=path,
            admin=f"http://{pod.ip}:{registry.PORTS.envoy_admin}",
            status=f"{pod.ip}:{spec.readiness.port}",
            drain_time_s=int(duration_seconds(drain.get("drainDuration", "45s"))),
            termination_drain_s=duration_seconds(drain.get("terminationDrainDuration", "5s")),
        )

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
                    if (
                        exc.errno == errno.EADDRINUSE
                        and self.on_fault is not None
                        and np.node not in self._bind_faults
                    ):
                        # another lab on these addresses: retrying cannot help
                        self._bind_faults.add(np.node)
                        self.on_fault(
                            address_taken(f"kube-proxy on {np.node}", np.ip, np.node_port)
                        )
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
