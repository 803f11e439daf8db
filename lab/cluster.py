"""The local lab's stand-in for kubelet and kube-proxy: small, and only what the
experiment depends on. It runs the pods of the *rendered* manifests on loopback.

Modelled, each from a Kubernetes fact:
- Containers run with their manifest env; fieldRef env (metadata.name, status.podIP,
  ...) is filled in as the Downward API does.
- Readiness and liveness probes: httpGet every periodSeconds (1 s timeout), not ready /
  failed after failureThreshold consecutive failures, ready again on one success. A pod
  is ready when every container is. A failed liveness probe restarts the container,
  except in a terminating pod (kubelet restarts nothing there).
- Termination (kubelet): the pod is marked terminating at once; every container stops
  in parallel: a container with a preStop hook runs it first and gets SIGTERM when it
  ends, a container without one gets SIGTERM at once (so istio-proxy starts draining in
  parallel with hc's preStop, FINDINGS); whatever still runs at
  terminationGracePeriodSeconds is SIGKILLed, hooks included; a hook that overruns the
  grace gets kubelet's one-off 2 s extension, then its container SIGTERM and SIGKILL.
- EndpointSlice conditions: ready = ready and not terminating; serving = ready (the
  readiness probes) whether terminating or not; terminating.
- NodePort with externalTrafficPolicy: Local (kube-proxy): a node forwards only to
  its own pods; ready ones, else serving-and-terminating ones (KEP-1669, since 1.28);
  with none it refuses new connections while established ones live on (conntrack).

Lab-only translations, because pods share the host's loopback instead of having their
own network namespace: a pod's "all interfaces" and its 127.0.0.1 become its own
127.x pod IP (in env like HC_ADDR, in preStop commands, and HC_URL / ENVOY_ADMIN for the
drain script); images map to our programs (istio-proxy -> lab.pilot_agent with Envoy,
hc -> python -m hc, backend -> python -m backend); /opt/hc/graceful-drain.sh is the
repository's apps/hc/graceful-drain.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .envoy_bootstrap import Upstream, gateway_bootstrap
from .events import EventLog

ROOT = Path(__file__).resolve().parent.parent
DRAIN_SCRIPT = ROOT / "apps" / "hc" / "graceful-drain.sh"
PY = sys.executable


# ---------------------------------------------------------------- topology


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


WORKERS = ("worker1", "worker2")


# ---------------------------------------------------------------- specs from manifests


@dataclass(frozen=True, slots=True)
class Probe:
    path: str
    port: int
    period_s: float
    failure_threshold: int

    @classmethod
    def from_manifest(cls, probe: dict[str, Any] | None) -> Probe | None:
        if not probe:
            return None
        return cls(
            probe["httpGet"]["path"],
            int(probe["httpGet"]["port"]),
            float(probe.get("periodSeconds", 10)),
            int(probe.get("failureThreshold", 3)),
        )


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    env: list[dict[str, Any]]
    readiness: Probe | None
    liveness: Probe | None
    prestop: list[str] | None

    @classmethod
    def from_manifest(cls, c: dict[str, Any]) -> ContainerSpec:
        hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        return cls(
            c["name"],
            c["image"],
            c.get("env", []),
            Probe.from_manifest(c.get("readinessProbe")),
            Probe.from_manifest(c.get("livenessProbe")),
            list(hook) if hook else None,
        )


@dataclass(frozen=True, slots=True)
class PodTemplate:
    deployment: str
    labels: dict[str, str]
    grace_s: float
    containers: list[ContainerSpec]
    replicas: int

    @classmethod
    def from_deployment(cls, doc: dict[str, Any]) -> PodTemplate:
        tpl = doc["spec"]["template"]
        return cls(
            doc["metadata"]["name"],
            dict(tpl["metadata"].get("labels", {})),
            float(tpl["spec"].get("terminationGracePeriodSeconds", 30)),
            [ContainerSpec.from_manifest(c) for c in tpl["spec"]["containers"]],
            int(doc["spec"].get("replicas", 1)),
        )


@dataclass
class Manifests:
    """The objects of one rendered mode: what the lab needs from each."""

    gateway: PodTemplate
    backend: PodTemplate
    backend_port: int
    gateway_port: int
    route_timeout_s: float
    node_ports: dict[int, int]  # nodePort -> targetPort
    proxy_config: dict[str, Any]

    @classmethod
    def load(cls, directory: Path, mode_file: str) -> Manifests:
        docs: list[dict[str, Any]] = []
        for name in (
            "10-backend.yaml",
            mode_file,
            "22-igw-service.yaml",
            "30-gateway.yaml",
            "31-virtualservice.yaml",
        ):
            docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]

        def one(kind: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True) -> dict:
            return next(d for d in docs if d["kind"] == kind and pred(d))

        gw_deploy = one("Deployment", lambda d: "mode" in d["metadata"].get("labels", {}))
        be_deploy = one("Deployment", lambda d: "mode" not in d["metadata"].get("labels", {}))
        be_svc = one("Service", lambda d: d["spec"].get("type", "ClusterIP") == "ClusterIP")
        gw_svc = one("Service", lambda d: d["spec"].get("type") == "NodePort")
        gateway = one("Gateway")
        vs = one("VirtualService")
        proxy = next(
            c
            for c in gw_deploy["spec"]["template"]["spec"]["containers"]
            if c["name"] == "istio-proxy"
        )
        proxy_config = json.loads(
            next(e["value"] for e in proxy["env"] if e["name"] == "PROXY_CONFIG")
        )
        return cls(
            gateway=PodTemplate.from_deployment(gw_deploy),
            backend=PodTemplate.from_deployment(be_deploy),
            backend_port=int(be_svc["spec"]["ports"][0]["targetPort"]),
            gateway_port=int(gateway["spec"]["servers"][0]["port"]["number"]),
            route_timeout_s=_seconds(vs["spec"]["http"][0]["timeout"]),
            node_ports={int(p["nodePort"]): int(p["targetPort"]) for p in gw_svc["spec"]["ports"]},
            proxy_config=proxy_config,
        )


def _seconds(duration: str) -> float:
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    if duration.endswith("s"):
        return float(duration[:-1])
    if duration.endswith("m"):
        return float(duration[:-1]) * 60
    raise ValueError(f"duration {duration!r}: expected e.g. 150s")


# ---------------------------------------------------------------- logs to events


def parse_logfmt(line: str) -> dict[str, str]:
    try:
        return dict(tok.split("=", 1) for tok in shlex.split(line) if "=" in tok)
    except ValueError:
        return {}


def _ts_ms(fields: dict[str, str]) -> float | None:
    ts = fields.get("ts")
    if not ts:
        return None
    try:
        return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000, 1)
    except ValueError:
        return None


# ---------------------------------------------------------------- containers and pods


@dataclass
class Container:
    spec: ContainerSpec
    pod: Pod
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Pod:
    def __init__(
        self, cluster: LabCluster, template: PodTemplate, name: str, node: str, ip: str
    ) -> None:
        self.cluster = cluster
        self.template = template
        self.name = name
        self.node = node
        self.ip = ip
        self.labels = template.labels
        self.terminating = False
        self.terminated = asyncio.Event()
        self.containers = [Container(c, self) for c in template.containers]
        self.hooks: list[asyncio.subprocess.Process] = []
        self.hook_tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        """All containers pass readiness (a probe-less container: while it runs)."""
        return all(c.ready for c in self.containers)

    def env(self, c: ContainerSpec) -> dict[str, str]:
        """The container env with fieldRefs resolved (Downward API) and the pod loopback."""
        refs = {
            "metadata.name": self.name,
            "metadata.namespace": self.cluster.namespace,
            "status.podIP": self.ip,
            "status.hostIP": self.cluster.topology.node_ip(WORKERS.index(self.node) + 1),
            "spec.nodeName": self.node,
            "spec.serviceAccountName": self.template.deployment,
        }
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        for e in c.env:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            else:
                env[e["name"]] = refs.get(e["valueFrom"]["fieldRef"]["fieldPath"], "")
        if env.get("HC_ADDR", "").startswith(":"):
            env["HC_ADDR"] = self.ip + env["HC_ADDR"]  # ":port" = every interface of the pod
        return env

    def argv(self, c: ContainerSpec) -> list[str]:
        if "proxyv2" in c.image:
            return self.cluster.proxy_argv(self)
        if "hc" in c.image.rsplit("/", 1)[-1]:
            return [PY, "-m", "hc"]
        if "backend" in c.image.rsplit("/", 1)[-1]:
            return [PY, "-m", "backend"]
        raise ValueError(f"the lab has no program for image {c.image!r}")

    async def start(self) -> None:
        for c in self.containers:
            await self._start_container(c)

    async def _start_container(self, c: Container) -> None:
        env = self.env(c.spec)
        if "backend" in c.spec.image:
            env["BIND_HOST"] = self.ip
        log = self.cluster.lab_dir / "logs" / f"{self.name}.{c.spec.name}.log"
        c.proc = await asyncio.create_subprocess_exec(
            *self.argv(c.spec),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        c.ready = c.spec.readiness is None
        self.cluster.events.emit(
            "kubelet", "container_started", pod=self.name, container=c.spec.name, pid=c.proc.pid
        )
        c.tasks = [asyncio.create_task(self.cluster.pump(c.proc, log, self.name, c.spec.name))]
        if c.spec.readiness:
            c.tasks.append(asyncio.create_task(self._probe(c, c.spec.readiness, "readiness")))
        if c.spec.liveness:
            c.tasks.append(asyncio.create_task(self._probe(c, c.spec.liveness, "liveness")))
        c.tasks.append(asyncio.create_task(self._watch_exit(c)))

    async def _watch_exit(self, c: Container) -> None:
        assert c.proc is not None
        code = await c.proc.wait()
        c.ready = False
        self.cluster.events.emit(
            "kubelet", "container_exited", pod=self.name, container=c.spec.name, code=code
        )

    async def _probe(self, c: Container, probe: Probe, kind: str) -> None:
        failures = 0
        url = f"http://{self.ip}:{probe.port}{probe.path}"
        timeout = aiohttp.ClientTimeout(total=1)
        while c.running:
            await asyncio.sleep(probe.period_s)
            try:
                async with self.cluster.http.get(url, timeout=timeout) as r:
                    ok = 200 <= r.status < 400
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            failures = 0 if ok else failures + 1
            if kind == "readiness":
                was = c.ready
                c.ready = ok or (c.ready and failures < probe.failure_threshold)
                if c.ready != was:
                    self.cluster.events.emit(
                        "kubelet", "readiness", pod=self.name, container=c.spec.name, ready=c.ready
                    )
            elif failures >= probe.failure_threshold and c.running:
                self.cluster.events.emit(
                    "kubelet",
                    "liveness_failed",
                    pod=self.name,
                    container=c.spec.name,
                    terminating=self.terminating,
                )
                if not self.terminating:  # kubelet restarts nothing in a terminating pod
                    await self._restart(c)
                return

    async def _restart(self, c: Container) -> None:
        self._signal(c, signal.SIGKILL)
        assert c.proc is not None
        await c.proc.wait()
        c.restarts += 1
        await self._start_container(c)

    def _signal(self, c: Container, sig: signal.Signals) -> None:
        """SIGTERM goes to the container's main process only (its PID 1: pilot-agent,
        not Envoy); SIGKILL takes the whole container, as the runtime kills the cgroup."""
        if c.running:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(c.proc.pid, sig)
                else:
                    os.kill(c.proc.pid, sig)

    def hook_env_and_argv(self, c: ContainerSpec) -> tuple[dict[str, str], list[str]]:
        assert c.prestop is not None
        env = self.env(c)
        # the pod's loopback is its pod IP here; preStop output is captured by the lab
        env.update(
            HC_URL=f"http://{self.ip}:18180", ENVOY_ADMIN=f"http://{self.ip}:15000", LOG_MIRROR=""
        )
        argv = [
            a.replace("127.0.0.1", self.ip).replace("/opt/hc/graceful-drain.sh", str(DRAIN_SCRIPT))
            for a in c.prestop
        ]
        return env, argv

    async def terminate(self) -> None:
        """kubelet's graceful deletion of this pod."""
        ev = self.cluster.events
        self.terminating = True
        ev.emit("kubelet", "pod_terminating", pod=self.name, grace_s=self.template.grace_s)
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.template.grace_s
        kill_at = {"t": grace_end}

        async def stop(c: Container) -> None:
            if c.spec.prestop:
                env, argv = self.hook_env_and_argv(c.spec)
                ev.emit("kubelet", "prestop_started", pod=self.name, container=c.spec.name)
                hook = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
                self.hooks.append(hook)
                log = self.cluster.lab_dir / "logs" / f"{self.name}.{c.spec.name}.prestop.log"
                pump = asyncio.create_task(self.cluster.pump(hook, log, self.name, "prestop"))
                self.hook_tasks.append(pump)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hook.wait(), max(grace_end - loop.time(), 0))
                if hook.returncode is None:
                    # the hook outlived the grace period: kubelet grants a one-off 2 s
                    # extension, then stops the container anyway (pod lifecycle docs)
                    kill_at["t"] = grace_end + 2
                    ev.emit(
                        "kubelet",
                        "prestop_overran",
                        pod=self.name,
                        container=c.spec.name,
                        extension_s=2,
                    )
                else:
                    await asyncio.wait({pump}, timeout=1)
                    ev.emit(
                        "kubelet",
                        "prestop_finished",
                        pod=self.name,
                        container=c.spec.name,
                        code=hook.returncode,
                    )
            if c.running:
                ev.emit("kubelet", "sigterm", pod=self.name, container=c.spec.name)
                self._signal(c, signal.SIGTERM)
            if c.proc is not None:
                while c.proc.returncode is None and loop.time() < kill_at["t"]:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(c.proc.wait(), max(kill_at["t"] - loop.time(), 0))

        await asyncio.gather(*(stop(c) for c in self.containers))
        if self._kill_hooks():
            ev.emit("kubelet", "prestop_killed", pod=self.name)
        for c in self.containers:
            if c.running:
                ev.emit(
                    "kubelet",
                    "sigkill",
                    pod=self.name,
                    container=c.spec.name,
                    reason="terminationGracePeriodSeconds",
                )
                self._signal(c, signal.SIGKILL)
                assert c.proc is not None
                await c.proc.wait()
        ev.emit("kubelet", "pod_terminated", pod=self.name)
        self.terminated.set()

    def _kill_hooks(self) -> bool:
        """SIGKILL every preStop hook still running; True if there was one."""
        running = [hook for hook in self.hooks if hook.returncode is None]
        for hook in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hook.pid, signal.SIGKILL)
        return bool(running)

    async def kill(self) -> None:
        """Stop everything at once (end of a run), reaping every process and pipe."""
        self._kill_hooks()
        for hook in self.hooks:
            await hook.wait()
        for c in self.containers:
            self._signal(c, signal.SIGKILL)
            if c.proc is not None:
                await c.proc.wait()
        tasks = self.hook_tasks + [t for c in self.containers for t in c.tasks]
        for t in tasks:
            if not t.done() and t.get_coro().__name__ != "pump":
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- kube-proxy


def endpoint_conditions(pod: Pod) -> dict[str, bool]:
    """EndpointSlice conditions for one pod."""
    ready = pod.ready
    return {
        "ready": ready and not pod.terminating,
        "serving": ready,
        "terminating": pod.terminating,
    }


def local_endpoints(pods: list[Pod]) -> list[Pod]:
    """externalTrafficPolicy: Local: ready pods, else serving-and-terminating (KEP-1669)."""
    alive = [p for p in pods if not p.terminated.is_set()]
    ready = [p for p in alive if endpoint_conditions(p)["ready"]]
    if ready:
        return ready
    return [p for p in alive if endpoint_conditions(p)["serving"]]


class NodePort:
    """One node's NodePort: forwards to the node's own endpoints, or refuses."""

    def __init__(
        self, cluster: LabCluster, node: str, ip: str, node_port: int, target_port: int
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.ip = ip
        self.node_port = node_port
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.rr = 0

    def endpoints(self) -> list[Pod]:
        return local_endpoints([p for p in self.cluster.gateway_pods if p.node == self.node])

    async def reconcile(self) -> None:
        want_open = bool(self.endpoints())
        if want_open and self.server is None:
            self.server = await asyncio.start_server(
                self._accept, self.ip, self.node_port, reuse_address=True, backlog=1024
            )
            self.cluster.events.emit(
                "kube-proxy", "nodeport_open", node=self.node, port=self.node_port
            )
        elif not want_open and self.server is not None:
            self.server.close()  # new connections refused; established ones live on
            self.server = None
            self.cluster.events.emit(
                "kube-proxy", "nodeport_closed", node=self.node, port=self.node_port
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        eps = self.endpoints()
        if not eps:
            _reset(writer)
            return
        pod = eps[self.rr % len(eps)]
        self.rr += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(pod.ip, self.target_port)
        except OSError:
            _reset(writer)
            return
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a reset propagates through kube-proxy's DNAT."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionResetError, BrokenPipeError):
        _reset(writer)
    except OSError:
        writer.transport.abort()


# ---------------------------------------------------------------- the cluster


class LabCluster:
    """Two workers, a gateway pod on each, two backend pods, NodePorts on each worker."""

    def __init__(
        self,
        topology: Topology,
        manifests: Manifests,
        lab_dir: Path,
        events: EventLog,
        namespace: str = "service-a",
    ) -> None:
        self.topology = topology
        self.manifests = manifests
        self.lab_dir = lab_dir
        self.events = events
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
            for i, node in enumerate(WORKERS)
            for node_port, target in m.node_ports.items()
        ]
        self._conditions: dict[str, dict[str, bool]] = {}
        self._reconciler: asyncio.Task[None] | None = None

    def proxy_argv(self, pod: Pod) -> list[str]:
        m = self.manifests
        config = gateway_bootstrap(
            listen_host=pod.ip,
            listen_port=m.gateway_port,
            admin_host=pod.ip,
            admin_port=15000,
            upstreams=[Upstream(p.ip, m.backend_port) for p in self.backend_pods],
            route_timeout_s=m.route_timeout_s,
        )
        path = self.lab_dir / f"envoy-{pod.name}.json"
        path.write_text(json.dumps(config, indent=1))
        status_port = next(
            c.readiness.port
            for c in pod.template.containers
            if "proxyv2" in c.image and c.readiness
        )
        return [
            PY,
            "-m",
            "lab.pilot_agent",
            "--config",
            str(path),
            "--admin",
            f"http://{pod.ip}:15000",
            "--status",
            f"{pod.ip}:{status_port}",
            "--drain-time-s",
            str(int(_seconds(m.proxy_config.get("drainDuration", "45s")))),
            "--termination-drain-s",
            str(_seconds(m.proxy_config.get("terminationDrainDuration", "5s"))),
        ]

    async def pump(
        self, proc: asyncio.subprocess.Process, log: Path, pod: str, container: str
    ) -> None:
        """Container output to its log file, and the lines that matter to events."""
        assert proc.stdout is not None
        with log.open("ab", buffering=0) as out:
            while line := await proc.stdout.readline():
                out.write(line)
                self._log_event(line.decode(errors="replace"), pod, container)

    def _log_event(self, line: str, pod: str, container: str) -> None:
        if "msg=" not in line:
            return
        f = parse_logfmt(line)
        msg = f.get("msg", "")
        ts = _ts_ms(f)
        if container == "hc" and msg == "transition":
            self.events.emit(
                "hc",
                "transition",
                ts_ms=ts,
                pod=pod,
                **{"from": f.get("from"), "to": f.get("to"), "reason": f.get("reason")},
            )
        elif container == "prestop":
            self.events.emit(
                "prestop",
                "step",
                ts_ms=ts,
                pod=pod,
                step=f.get("step"),
                msg=msg,
                **{k: v for k, v in f.items() if k in ("active", "outcome", "elapsed", "rc")},
            )
        elif container == "istio-proxy" and msg in (
            "drain_listeners",
            "killing_envoy",
            "exit",
            "active_connections",
        ):
            self.events.emit(
                "pilot-agent",
                msg,
                ts_ms=ts,
                pod=pod,
                **{k: v for k, v in f.items() if k not in ("ts", "msg", "level", "app")},
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
                    self.events.emit("endpointslice", "conditions", pod=pod.name, **cond)
            for np in self.node_ports:
                try:
                    await np.reconcile()
                except OSError as exc:
                    self.events.emit("kube-proxy", "error", node=np.node, error=str(exc))
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
