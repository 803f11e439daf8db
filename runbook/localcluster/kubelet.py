"""kubelet's part of the local lab: containers with their probes, restarts, and the
graceful termination of a pod (see the package docstring for what is modelled)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from ..artifacts.events import EventLog
from ..artifacts.writes import WriteFailures
from ..model.registry import PORTS
from .lablock import address_taken
from .manifests import ContainerSpec, PodTemplate, Probe

#: The image's repository name -> the program the lab runs for it (by role; each
#: program's command line is the cluster's: LabCluster.container_command).
PROGRAMS = {
    "proxyv2": "istio-proxy",
    "igw-hc": "hc",
    "igw-backend": "backend",
}
#: gRPC's health protocol: the method kubelet's `grpc:` probe calls, and its SERVING
#: reply (HealthCheckResponse, field 1 = 1, as protobuf encodes it)
GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GRPC_SERVING = b"\x08\x01"
#: The drain script installed with the hc package (the image's /opt/hc/graceful-drain.sh).
DRAIN_SCRIPT = Path(str(resources.files("hc") / "graceful-drain.sh"))
IMAGE_DRAIN_SCRIPT = "/opt/hc/graceful-drain.sh"


def program_for(image: str) -> str:
    """`docker.io/istio/proxyv2:1.30.3` -> `istio-proxy`; an unknown image is an error."""
    repo = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    if repo not in PROGRAMS:
        known = ", ".join(sorted(PROGRAMS))
        raise ValueError(f"the lab has no program for image {image!r} (known: {known})")
    return PROGRAMS[repo]


#: A container line's receiver: (pod, container, line).
LogLineSink = Callable[[str, str, str], None]


@dataclass(frozen=True)
class PodEnvironment:
    """What a pod needs from the node that runs it, and no more: kubelet's view."""

    namespace: str
    #: the node's address (status.hostIP)
    host_ip: str
    #: the working folder of every container and hook; their logs in logs/
    work_dir: Path
    #: kubelet's events (kubelet.jsonl, as the homelab's collectors write it)
    events: EventLog
    #: the probes' HTTP client
    http: aiohttp.ClientSession
    #: a container's command line (the image's program, pilot-agent's flags, ...)
    command: Callable[[Pod, ContainerSpec], list[str]]
    #: each line a container or hook writes (the collectors decide what it means)
    on_log_line: LogLineSink | None = None
    #: where a failed write to a container's log goes (the run stops); None: it raises
    failures: WriteFailures | None = None
    #: what stops the run when the lab itself is broken (a container that cannot bind
    #: its address: another process holds it); None: only kubelet's events say so
    on_fault: Callable[[str], None] | None = None

    def log_path(self, pod: str, container: str) -> Path:
        return self.work_dir / "logs" / f"{pod}.{container}.log"


#: An "address already in use" line, as Python's asyncio and Envoy write it:
#: `... bind on address ('127.31.1.10', 18180): address already in use`,
#: `cannot bind '127.31.1.10:8080': Address already in use`.
_IN_USE = re.compile(r"address already in use", re.IGNORECASE)
_ADDRESS = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})'?(?:, |:)(\d{1,5})")


def bind_failure(log_tail: str) -> tuple[str, int] | None:
    """The address:port a container could not bind, from its last log lines."""
    for line in reversed(log_tail.splitlines()):
        if _IN_USE.search(line) and (m := _ADDRESS.search(line)):
            return m.group(1), int(m.group(2))
    return None


async def pump_log(
    proc: asyncio.subprocess.Process,
    log: Path,
    pod: str,
    container: str,
    where: PodEnvironment,
) -> None:
    """Container output to its log file, each line also to `where.on_log_line`, as the
    container runtime's logging does (the homelab reads the same lines from the API's
    stream). After a failed write the output is still read (a full pipe would stall the
    container) but no longer kept; the failure goes to `where.failures`."""
    assert proc.stdout is not None
    with log.open("ab", buffering=0) as out:
        keep = True
        while line := await proc.stdout.readline():
            if keep:
                try:
                    out.write(line)
                except OSError as exc:
                    if where.failures is None:
                        raise
                    where.failures.report(log, exc)
                    keep = False
            if where.on_log_line is not None:
                where.on_log_line(pod, container, line.decode(errors="replace"))


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
        self, where: PodEnvironment, template: PodTemplate, name: str, node: str, ip: str
    ) -> None:
        self.where = where
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
            "metadata.namespace": self.where.namespace,
            "status.podIP": self.ip,
            "status.hostIP": self.where.host_ip,
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

    async def start(self) -> None:
        for c in self.containers:
            await self._start_container(c)

    async def _start_container(self, c: Container) -> None:
        env = self.env(c.spec)
        if program_for(c.spec.image) == "backend":
            env["BIND_HOST"] = self.ip
        c.proc = await asyncio.create_subprocess_exec(
            *self.where.command(self, c.spec),
            env=env,
            cwd=self.where.work_dir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        c.ready = c.spec.readiness is None
        self.where.events.emit(
            "kubelet", "container_started", pod=self.name, container=c.spec.name, pid=c.proc.pid
        )
        log = self.where.log_path(self.name, c.spec.name)
        c.tasks = [asyncio.create_task(pump_log(c.proc, log, self.name, c.spec.name, self.where))]
        if c.spec.readiness:
            c.tasks.append(asyncio.create_task(self._probe(c, c.spec.readiness, "readiness")))
        if c.spec.liveness:
            c.tasks.append(asyncio.create_task(self._probe(c, c.spec.liveness, "liveness")))
        c.tasks.append(asyncio.create_task(self._watch_exit(c)))

    async def _watch_exit(self, c: Container) -> None:
        assert c.proc is not None
        code = await c.proc.wait()
        c.ready = False
        self.where.events.emit(
            "kubelet", "container_exited", pod=self.name, container=c.spec.name, code=code
        )
        if code != 0 and not self.terminating:
            await self._fail_on_bind_error(c)

    async def _fail_on_bind_error(self, c: Container) -> None:
        """A container that died because its address was taken: the lab collides with
        another (a checkout, a process left running), and restarting cannot help; the
        run stops, naming the address and its holder."""
        # its last lines reach the log once the pump has read the pipe to its end
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(c.tasks[0]), 2)
        try:
            tail = self.where.log_path(self.name, c.spec.name).read_text(errors="replace")
        except OSError:
            return
        found = bind_failure(tail[-8192:])
        if found is None:
            return
        address, port = found
        fault = address_taken(f"{self.name}/{c.spec.name}", address, port)
        self.where.events.emit(
            "kubelet",
            "bind_failed",
            pod=self.name,
            container=c.spec.name,
            address=f"{address}:{port}",
            fault=fault,
        )
        if self.where.on_fault is not None:
            self.where.on_fault(fault)

    async def _passes(self, probe: Probe) -> bool:
        """One probe: an HTTP GET answered 2xx or 3xx, or gRPC's health Check answered
        SERVING (kubelet's `grpc:` probe, a new connection each time as kubelet's)."""
        if probe.kind == "grpc":
            async with grpc.aio.insecure_channel(f"{self.ip}:{probe.port}") as channel:
                try:
                    reply = await channel.unary_unary(GRPC_HEALTH_CHECK)(b"", timeout=1)
                except grpc.aio.AioRpcError:
                    return False
            return reply == GRPC_SERVING
        url = f"http://{self.ip}:{probe.port}{probe.path}"
        try:
            async with self.where.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                return 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _probe(self, c: Container, probe: Probe, kind: str) -> None:
        failures = 0
        while c.running:
            await asyncio.sleep(probe.period_s)
            ok = await self._passes(probe)
            if not c.running:
                # it exited during the probe: whatever answered was not this container
                # (another lab's process on the same address, once)
                return
            failures = 0 if ok else failures + 1
            if kind == "readiness":
                was = c.ready
                c.ready = ok or (c.ready and failures < probe.failure_threshold)
                if c.ready != was:
                    self.where.events.emit(
                        "kubelet", "readiness", pod=self.name, container=c.spec.name, ready=c.ready
                    )
            elif failures >= probe.failure_threshold and c.running:
                self.where.events.emit(
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
            HC_URL=f"http://{self.ip}:{PORTS.hc}",
            ENVOY_ADMIN=f"http://{self.ip}:{PORTS.envoy_admin}",
            LOG_MIRROR="",
        )
        argv = [
            a.replace("127.0.0.1", self.ip).replace(IMAGE_DRAIN_SCRIPT, str(DRAIN_SCRIPT))
            for a in c.prestop
        ]
        return env, argv

    async def terminate(self) -> None:
        """kubelet's graceful deletion of this pod."""
        ev = self.where.events
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
                    cwd=self.where.work_dir,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
                self.hooks.append(hook)
                log = self.where.log_path(self.name, f"{c.spec.name}.prestop")
                pump = asyncio.create_task(pump_log(hook, log, self.name, "prestop", self.where))
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
            if not t.done() and t.get_coro().__name__ != "pump_log":
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
