"""The local lab's kubelet and kube-proxy stand-ins, with the real pods they run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from helpers import Procs, free_port, http, render_manifests
from runbook.artifacts.events import CollectedDir, merge, read_jsonl
from runbook.collectors.podlogs import event_from_line
from runbook.localcluster.cluster import LabCluster, Topology
from runbook.localcluster.envoy_bootstrap import Upstream, gateway_bootstrap
from runbook.localcluster.kubelet import Pod, bind_failure, program_for
from runbook.localcluster.kubeproxy import local_endpoints
from runbook.localcluster.manifests import ContainerSpec, Manifests, PodTemplate, Probe


@pytest.fixture(scope="module")
def quick_manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("quick")
    result = render_manifests(dest, {"timing_profile": "quick"})
    assert result.returncode == 0, result.stdout
    return dest


@contextlib.asynccontextmanager
async def running_lab(
    manifests: Path,
    mode_file: str,
    index: int,
    tmp_path: Path,
    on_fault: Callable[[str], None] | None = None,
) -> AsyncIterator[LabCluster]:
    """A lab (not yet started) whose collected events end up merged in
    tmp_path/events.jsonl, as a run's do; stopped and closed after."""
    collected = CollectedDir(tmp_path)
    pods = collected.log("pods")

    def on_line(pod: str, container: str, line: str) -> None:
        if (found := event_from_line(pod, container, line)) is not None:
            pods.write(found)

    cluster = LabCluster(
        Topology(index),
        Manifests.load(manifests, mode_file),
        tmp_path / "lab",
        collected,
        on_line,
        on_fault=on_fault,
    )
    try:
        yield cluster
    finally:
        await cluster.stop()
        collected.close()
        merge(tmp_path)


def pod_like(ready: bool, terminating: bool, gone: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        ready=ready, terminating=terminating, terminated=SimpleNamespace(is_set=lambda: gone)
    )


def test_images_map_to_programs_explicitly() -> None:
    assert program_for("docker.io/istio/proxyv2:1.30.3") == "istio-proxy"
    assert program_for("localhost/igw-hc:0.1.0") == "hc"
    assert program_for("localhost/igw-backend@sha256:00") == "backend"
    # no sniffing: an image that merely contains a known word is refused, naming it
    with pytest.raises(ValueError, match="my-hc-backend"):
        program_for("registry.example/my-hc-backend:1")


def test_local_policy_prefers_ready_then_serving_terminating() -> None:
    ready, draining, closed = pod_like(True, False), pod_like(True, True), pod_like(False, True)
    assert local_endpoints([ready, draining]) == [ready]
    assert local_endpoints([draining, closed]) == [draining]  # KEP-1669 fallback
    assert local_endpoints([closed]) == []
    assert local_endpoints([pod_like(True, True, gone=True)]) == []


def by_kind(events: list[dict], pod: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        if e.get("pod") == pod:
            out.setdefault(e["kind"], []).append(e)
    return out


def test_improved_termination_keeps_established_and_drops_new(
    quick_manifests: Path, tmp_path: Path
) -> None:
    events_path = tmp_path / "events.jsonl"

    async def scenario() -> dict:
        out: dict = {}
        async with running_lab(quick_manifests, "21-igw-improved.yaml", 190, tmp_path) as cluster:
            topo = cluster.topology
            await cluster.start()
            await cluster.wait_ready(60)
            await asyncio.sleep(0.3)  # the NodePorts open on the next reconcile
            node = f"http://{topo.node_ip(1)}"
            async with aiohttp.ClientSession() as http:
                established = asyncio.create_task(http.get(f"{node}:30080/sleep?seconds=4"))
                await asyncio.sleep(0.5)
                victim = cluster.gateway_pods[0]
                term = asyncio.create_task(victim.terminate())
                await asyncio.sleep(0.5)
                # terminating but serving: the node still takes new connections (KEP-1669)
                async with http.get(f"{node}:30180/health") as r:
                    out["serving_new_status"] = r.status
                resp = await established
                out["established"] = (resp.status, await resp.text())
                # wait for CLOSED: readiness fails, the node drops new connections
                for _ in range(100):
                    if not victim.ready:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)
                try:
                    timeout = aiohttp.ClientTimeout(total=1.5)
                    async with http.get(f"{node}:30180/health", timeout=timeout) as r:
                        out["after_closed"] = r.status
                except TimeoutError:
                    out["after_closed"] = "timeout"
                # ... but not traffic that starts on the node itself: kube-proxy sends it
                # to any ready endpoint in the cluster (here worker2's gateway)
                local = aiohttp.TCPConnector(local_addr=(topo.node_ip(1), 0))
                async with (
                    aiohttp.ClientSession(connector=local) as from_node,
                    from_node.get(f"{node}:30080/", timeout=aiohttp.ClientTimeout(total=5)) as r,
                ):
                    out["from_the_node_itself"] = r.status
                await term
        return out

    out = asyncio.run(scenario())
    assert out["serving_new_status"] == 200
    assert out["established"] == (200, "slept 4s\n")
    assert out["after_closed"] == "timeout"  # dropped, as kube-proxy does: not refused
    assert out["from_the_node_itself"] == 200

    events = read_jsonl(events_path)
    pod = "service-a-igw-improved-worker1"
    k = by_kind(events, pod)
    t0 = k["pod_terminating"][0]["ts_ms"]
    sigterms = {e["container"]: e["ts_ms"] for e in k["sigterm"]}
    # no preStop on istio-proxy: SIGTERM at once, in parallel with hc's preStop
    assert sigterms["istio-proxy"] - t0 < 100
    assert sigterms["hc"] >= k["prestop_finished"][0]["ts_ms"]
    conditions = [(e["ready"], e["serving"], e["terminating"]) for e in k["conditions"]]
    assert (False, True, True) in conditions and (False, False, True) in conditions
    # pilot-agent drained at once and killed Envoy at terminationDrainDuration (quick: 16 s)
    drained = next(e for e in events if e["kind"] == "drain_listeners" and e["pod"] == pod)
    killed = next(e for e in events if e["kind"] == "killing_envoy" and e["pod"] == pod)
    assert drained["ts_ms"] - t0 < 500
    assert 15.5 <= (killed["ts_ms"] - t0) / 1000 <= 17.5
    assert (k["pod_terminated"][0]["ts_ms"] - t0) / 1000 < 30  # inside the 30 s grace


def test_grace_period_kills_a_hook_that_overruns(quick_manifests: Path, tmp_path: Path) -> None:
    events_path = tmp_path / "events.jsonl"

    async def scenario() -> float:
        async with running_lab(quick_manifests, "20-igw-current.yaml", 191, tmp_path) as cluster:
            return await terminate_slow_pod(cluster)

    async def terminate_slow_pod(cluster: LabCluster) -> float:
        template = PodTemplate(
            "slow",
            {},
            2.0,
            [
                ContainerSpec(
                    "app",
                    "localhost/igw-backend:0",
                    [{"name": "PORT", "value": "18099"}],
                    None,
                    None,
                    ["/bin/sh", "-c", "sleep 30"],
                )
            ],
            1,
        )
        pod = Pod(
            cluster.pod_environment("worker1"),
            template,
            "slow-1",
            "worker1",
            cluster.topology.backend_pod_ip(9),
        )
        try:
            await pod.start()
            await asyncio.sleep(1)
            started = time.monotonic()
            await pod.terminate()
            return time.monotonic() - started
        finally:
            await pod.kill()

    took = asyncio.run(scenario())
    k = by_kind(read_jsonl(events_path), "slow-1")
    t0 = k["pod_terminating"][0]["ts_ms"]
    # grace 2 s: the hook overran, kubelet's 2 s extension began, SIGTERM went in
    assert 1.9 <= (k["prestop_overran"][0]["ts_ms"] - t0) / 1000 <= 2.5
    assert 1.9 <= (k["sigterm"][0]["ts_ms"] - t0) / 1000 <= 2.5
    assert "prestop_finished" not in k
    # the backend ends on SIGTERM; the 30 s hook is killed with its container
    assert "prestop_killed" in k
    assert took <= 4.5


def test_liveness_failure_restarts_the_container(quick_manifests: Path, tmp_path: Path) -> None:
    """hc's /live fails in FAULT; after failureThreshold x periodSeconds kubelet restarts hc."""
    events_path = tmp_path / "events.jsonl"

    async def scenario() -> int:
        async with running_lab(quick_manifests, "21-igw-improved.yaml", 192, tmp_path) as cluster:
            return await fault_and_wait(cluster)

    async def fault_and_wait(cluster: LabCluster) -> int:
        hc = next(c for c in cluster.manifests.gateway.containers if c.name == "hc")
        template = PodTemplate("hc-only", {}, 5.0, [hc], 1)
        pod = Pod(
            cluster.pod_environment("worker1"),
            template,
            "hc-only-1",
            "worker1",
            cluster.topology.gateway_pod_ip(9),
        )
        try:
            await pod.start()
            await asyncio.sleep(1)
            async with aiohttp.ClientSession() as http:
                await http.post(f"http://{pod.ip}:18180/fault")
                # quick profile: liveness every 2 s, 3 failures
                for _ in range(100):
                    if pod.containers[0].restarts:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)
                async with http.get(f"http://{pod.ip}:18180/drain/status") as r:
                    state = (await r.json())["state"]
            assert state == "OPEN"  # a fresh hc after the restart
            return pod.containers[0].restarts
        finally:
            await pod.kill()

    assert asyncio.run(scenario()) == 1
    kinds = [e["kind"] for e in read_jsonl(events_path) if e.get("pod") == "hc-only-1"]
    assert "liveness_failed" in kinds and kinds.count("container_started") == 2


def test_pilot_agent_exit_on_zero_active_connections(procs: Procs, tmp_path: Path) -> None:
    """EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true: after MINIMUM_DRAIN_DURATION, exit at zero
    connections instead of waiting terminationDrainDuration."""
    backend = procs.backend()
    port, admin, status = free_port(), free_port(), free_port()
    config = tmp_path / "envoy.json"
    config.write_text(
        json.dumps(
            gateway_bootstrap(
                listen_host="127.0.0.1",
                listen_port=port,
                admin_host="127.0.0.1",
                admin_port=admin,
                upstreams=[Upstream("127.0.0.1", backend.port)],
                route_timeout_s=30,
            )
        )
    )
    agent = procs.start(
        "pilot-agent",
        [
            sys.executable,
            "-m",
            "runbook.localcluster.pilot_agent",
            "--config",
            str(config),
            "--admin",
            f"http://127.0.0.1:{admin}",
            "--status",
            f"127.0.0.1:{status}",
            "--drain-time-s",
            "30",
            "--termination-drain-s",
            "30",
        ],
        status,
        {**os.environ, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true", "MINIMUM_DRAIN_DURATION": "1s"},
    )
    time.sleep(1)
    ready = f"http://127.0.0.1:{status}/healthz/ready"
    assert http("GET", ready)[0] == 200
    started = time.monotonic()
    agent.popen.send_signal(signal.SIGTERM)
    # Istio: the status server stops with the agent's context at SIGTERM, so 15021's
    # readiness fails at once while Envoy still drains (istio-native's LB check)
    time.sleep(0.2)
    assert http("GET", ready)[0] == 503
    assert agent.popen.wait(15) == 0
    took = time.monotonic() - started
    assert 0.9 <= took < 5, took  # not the 30 s terminationDrainDuration
    assert agent.logfmt_lines("active_connections")[-1]["active"] == "0"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: an orphan's zombie stays until
    whoever adopted it reaps it."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(proc.name))
    return found


def test_leftover_pods_of_a_killed_runner_are_found_by_their_folder(tmp_path: Path) -> None:
    """The last resort of `make experiment`'s Ctrl-C: a container (its own process group,
    with a child, as Envoy under pilot-agent) working in the run's pods folder is
    killed with its child; a process working elsewhere is not touched."""
    from runbook.localcluster.cluster import kill_leftover_pods, pods_dir

    run_dir = tmp_path / "run"
    pods_dir(run_dir).mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    pod = subprocess.Popen(
        [sys.executable, "-c", script], cwd=pods_dir(run_dir), start_new_session=True
    )
    bystander = subprocess.Popen(["sleep", "60"], cwd=tmp_path / "elsewhere")
    try:
        time.sleep(0.5)  # the child is started
        assert kill_leftover_pods(run_dir)
        assert pod.wait(timeout=5) == -signal.SIGKILL
        assert group_members(pod.pid) == []  # the child went with the group
        assert bystander.poll() is None
        assert kill_leftover_pods(run_dir) == []
    finally:
        for p in (pod, bystander):
            p.kill()
            p.wait()


async def answer_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Another lab's process on our address: it answers every request 200."""
    with contextlib.suppress(OSError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    writer.close()


def test_a_container_whose_address_is_taken_is_never_ready_and_fails_the_run(
    quick_manifests: Path, tmp_path: Path
) -> None:
    """Another process listens on the pod's address and answers its readiness probe:
    the container dies on `address already in use`. Once kubelet marked it ready all
    the same (the probe's answer came from the other process) and the run went on; now
    it stays not ready and the run's fault names the address and its holder."""
    faults: list[str] = []
    events_path = tmp_path / "events.jsonl"

    async def scenario() -> tuple[bool, bool]:
        async with running_lab(
            quick_manifests, "20-igw-current.yaml", 193, tmp_path, faults.append
        ) as cluster:
            ip = cluster.topology.backend_pod_ip(9)
            holder = await asyncio.start_server(answer_200, ip, 18099)
            template = PodTemplate(
                "taken",
                {},
                2.0,
                [
                    ContainerSpec(
                        "app",
                        "localhost/igw-backend:0",
                        [{"name": "PORT", "value": "18099"}],
                        # the first probe comes after the container has died
                        Probe("/", 18099, 1.5, 1),
                        None,
                        None,
                    )
                ],
                1,
            )
            pod = Pod(cluster.pod_environment("worker1"), template, "taken-1", "worker1", ip)
            try:
                await pod.start()
                await asyncio.sleep(3.5)  # two probes, both answered by the holder
                return pod.containers[0].running, pod.ready
            finally:
                await pod.kill()
                holder.close()

    running, ready = asyncio.run(scenario())
    assert not running and not ready
    ip = Topology(193).backend_pod_ip(9)
    assert faults == [
        f"taken-1/app cannot bind {ip}:18099: address already in use, held by pid "
        f"{os.getpid()} ({faults[0].split(f'pid {os.getpid()} (', 1)[1]}"
    ], faults
    kinds = [e["kind"] for e in read_jsonl(events_path) if e.get("pod") == "taken-1"]
    assert "bind_failed" in kinds and "readiness" not in kinds


def test_a_nodeport_whose_address_is_taken_fails_the_run_once(
    quick_manifests: Path, tmp_path: Path
) -> None:
    """kube-proxy's stand-in once retried a taken NodePort forever (3,177 errors in a
    run); now the first failure stops the run, naming the address and the holder."""
    faults: list[str] = []

    async def scenario() -> None:
        async with running_lab(
            quick_manifests, "20-igw-current.yaml", 194, tmp_path, faults.append
        ) as cluster:
            node_port = next(iter(cluster.manifests.node_ports))
            ip = cluster.topology.ip_of_node("worker1")
            holder = await asyncio.start_server(answer_200, ip, node_port)
            try:
                await cluster.start()
                await asyncio.sleep(1)
            finally:
                holder.close()

    asyncio.run(scenario())
    (fault,) = faults
    assert fault.startswith(
        f"kube-proxy on worker1 cannot bind {Topology(194).ip_of_node('worker1')}:"
    )
    assert f"address already in use, held by pid {os.getpid()} (" in fault


@pytest.mark.parametrize(
    ("tail", "found"),
    [
        (
            "OSError: [Errno 98] error while attempting to bind on address "
            "('127.31.1.10', 18180): address already in use\n",
            ("127.31.1.10", 18180),
        ),
        (
            "[warning][config] cannot bind '127.31.1.10:8080': Address already in use\n",
            ("127.31.1.10", 8080),
        ),
        ("level=info msg=listening addr=127.31.1.10:8080\n", None),
    ],
)
def test_bind_failure_reads_the_address_from_the_log(
    tail: str, found: tuple[str, int] | None
) -> None:
    assert bind_failure(tail) == found


def _idle_timeouts(envoy_proc) -> int:
    """How many upstream connections the gateway's Envoy closed for idleness."""
    _, _, body = http("GET", envoy_proc.extra["admin"] + "/stats?filter=upstream_cx_idle_timeout")
    return sum(int(line.split(": ")[1]) for line in body.decode().splitlines() if ": " in line)


def test_the_gateway_lets_go_of_an_idle_backend_connection_before_the_backend(
    procs: Procs,
) -> None:
    """The timing model's gateway_upstream_idle_s < backend_keepalive_s, in the real
    processes: with the lab's upstream idle timeout Envoy closes the connection first
    and the backend never has to; without it (Envoy's hour) the backend closes it and
    says so, naming Envoy's end of it (what Envoy logs as its upstream local address)."""
    backend = procs.backend({"KEEPALIVE_TIMEOUT": "2"})
    gateway = procs.envoy(backend, upstream_idle_s=0.5)
    assert http("GET", f"http://127.0.0.1:{gateway.port}/")[0] == 200
    time.sleep(3.5)  # past both idle timeouts, and the backend's 1 s sweep
    assert _idle_timeouts(gateway) == 1
    assert backend.logfmt_lines("idle_connection_closed") == []

    bare = procs.envoy(backend)  # no upstream idle timeout: Envoy's default hour
    assert http("GET", f"http://127.0.0.1:{bare.port}/")[0] == 200
    time.sleep(4.5)  # the sweep runs every 2 s here: idle 2 s, seen at the next one
    assert _idle_timeouts(bare) == 0
    (closed,) = backend.logfmt_lines("idle_connection_closed")
    assert closed["peer"].startswith("127.0.0.1:") and 2 <= float(closed["idle_s"]) < 4.5
