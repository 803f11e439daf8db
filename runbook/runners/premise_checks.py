"""The checks of the experiment's premise on a running lab, gathered from real
processes and judged by runbook.analysis.checks: on the local lab (`check_running_lab`,
which the local runner also runs before every experiment, and `gather_local`, which
brings the pods up for `playbooks/verify.yml`), and on the homelab from the Kubernetes
API and what the playbook read on the workers (`gather_homelab`). The CLI is
runbook.runners.verify.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ..analysis import checks
from ..analysis.deployed import ENVOY_DEFAULT_IDLE_S, deployed_timing, raw_docs
from ..artifacts.events import CollectedDir
from ..collectors import envoy
from ..collectors import haproxy as haproxy_collector
from ..collectors.haproxy_config import haproxy_settings, haproxy_source
from ..collectors.tls import tls_accepts
from ..localcluster.cluster import LabCluster
from ..localcluster.manifests import Manifests
from ..localcluster.topology import NODES, Topology
from ..model import registry
from ..model.durations import duration_seconds


def tls_check(address: str) -> checks.Check:
    return checks.tls_versions(
        {
            "TLSv1.2": tls_accepts(address, ssl.TLSVersion.TLSv1_2),
            "TLSv1.1": tls_accepts(address, ssl.TLSVersion.TLSv1_1),
        }
    )


def rollout_check(deployment: dict[str, Any], schedulable_nodes: int) -> checks.Check:
    """The gateway Deployment's rollout against the nodes it may use."""
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    pod = deployment["spec"]["template"]["spec"]
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    return checks.rollout_seats(
        int(deployment["spec"]["replicas"]),
        int(strategy.get("maxSurge", 1)),
        int(strategy.get("maxUnavailable", 0)),
        bool(anti.get("requiredDuringSchedulingIgnoredDuringExecution")),
        schedulable_nodes,
    )


async def status_of(http: aiohttp.ClientSession, url: str) -> int | None:
    """The HTTP status, or None when nothing answers within a second (kube-proxy's drop
    for a Local-policy node without a pod; a node with one answers in milliseconds)."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def gather_local(args: argparse.Namespace) -> list[checks.Check]:
    """Start the mode's pods in a scratch lab, check them, stop them."""
    mode = registry.mode(args.mode)
    directory = Path(args.manifests)
    manifests = Manifests.load(directory, mode.manifest)
    scratch = Path(args.scratch_dir)
    # scratch of the previous verification (the report is the artifact, not this)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    collected = CollectedDir(scratch)
    cluster = LabCluster(Topology(args.lab_index), manifests, scratch / "lab", collected)
    try:
        await cluster.start()
        with contextlib.suppress(TimeoutError):
            await cluster.wait_ready(30)
        return await check_running_lab(
            cluster,
            args.mode,
            directory,
            Path(args.haproxy_config),
            args.haproxy_socket,
            args.haproxy_address,
            args.profile,
        )
    finally:
        await cluster.stop()
        collected.close()


async def check_running_lab(
    cluster: LabCluster,
    mode_name: str,
    manifests_dir: Path,
    haproxy_config: Path,
    haproxy_socket: str,
    haproxy_address: str,
    profile: str,
    tls: bool = True,
    planned: Mapping[str, Any] | None = None,
) -> list[checks.Check]:
    """Every check against a local lab whose pods run (the verify playbook's, or an
    experiment run's right after its bring-up). `tls`: the frontend offloads TLS (a
    plain-HTTP frontend, as some tests run, has no TLS to check). `planned`: the run's
    budget numbers (RunPlan.budget), for what the deployment does not show."""
    mode = registry.mode(mode_name)
    manifests = cluster.manifests
    docs = raw_docs(manifests_dir, mode.manifest)
    cfg_text = haproxy_config.read_text()
    cfg = haproxy_settings(cfg_text)
    # where HAProxy's server connections leave from: a node's address puts it on that node
    lb_node = cluster.topology.node_at(haproxy_source(cfg_text))
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
    found: list[checks.Check] = []
    try:
        states: dict[str, str] = {}
        for _ in range(50):  # HAProxy needs rise x inter to call a fresh pod UP
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(haproxy_collector.show_stat, haproxy_socket)
                states = haproxy_collector.parse_show_stat(text, registry.HAPROXY_BACKEND)
                if states and all(s == "UP" for s in states.values()):
                    break
            await asyncio.sleep(0.2)
        gw = cluster.gateway_pods
        found.append(checks.gateway_selector(manifests.gateway_selector or {}, gw[0].labels))
        found.append(
            checks.envoy_listener(
                manifests.gateway_port,
                {
                    p.name: await envoy.listeners(
                        http, f"http://{p.ip}:{registry.PORTS.envoy_admin}"
                    )
                    for p in gw
                },
            )
        )
        found.append(checks.proxy_volumes(docs["gateway"]["spec"]["template"]["spec"]))
        found.append(
            checks.no_restarts(
                {f"{p.name}/{c.spec.name}": c.restarts for p in gw for c in p.containers}
            )
        )
        # the check path HAProxy uses, through every node's NodePort (kube-proxy's rules)
        node_port = manifests.node_ports_by_name[mode.lb.check]
        # all nodes at once: a node that drops (no pod, Local policy) costs one timeout
        statuses = await asyncio.gather(
            *(
                status_of(
                    http,
                    f"http://{cluster.topology.ip_of_node(node)}:{node_port}{mode.lb.check_uri}",
                )
                for node in NODES
            )
        )
        answers = dict(zip(NODES, statuses, strict=True))
        found.append(checks.node_local_check(answers, {p.node for p in gw}))
        found.append(checks.lb_topology(lb_node, {p.node for p in gw}))
        # master1 is untainted in the lab, as the untaint role leaves it
        found.append(rollout_check(docs["gateway"], len(NODES)))
        found.append(checks.timing_budget(profile, deployed_timing(docs, cfg), planned))
        found.append(checks.keepalive(2 * cfg["pool_purge_delay_s"], ENVOY_DEFAULT_IDLE_S))
        found.append(checks.lb_servers_up(states))
        if tls:
            found.append(await asyncio.to_thread(tls_check, haproxy_address))
        found.append(
            checks.timeout_server(cfg.get("haproxy_timeout_server_s", 0), manifests.route_timeout_s)
        )
    finally:
        await http.close()
    return found


def gather_homelab(args: argparse.Namespace) -> list[checks.Check]:
    """The homelab's facts on the controller. Written against the kubernetes client and
    the names the manifests role renders; tested on onebox."""
    import urllib.error
    import urllib.request

    from kubernetes import client, config

    from ..collectors.kube import PortForwardAdmin

    mode = registry.mode(args.mode)
    config.load_kube_config(context=args.context)
    core, apps, custom = client.CoreV1Api(), client.AppsV1Api(), client.CustomObjectsApi()
    serialize = client.ApiClient().sanitize_for_serialization
    ns = args.namespace
    gateway = custom.get_namespaced_custom_object(
        "networking.istio.io", "v1", ns, "gateways", args.gateway
    )
    vs = custom.get_namespaced_custom_object(
        "networking.istio.io", "v1", ns, "virtualservices", args.virtualservice
    )
    deployment = serialize(apps.read_namespaced_deployment(args.deployment, ns))
    backend = serialize(apps.read_namespaced_deployment(args.backend, ns))
    service = serialize(core.read_namespaced_service(args.deployment, ns))
    pods = [
        p
        for p in core.list_namespaced_pod(ns, label_selector=registry.GATEWAY_POD_SELECTOR).items
        if p.metadata.deletion_timestamp is None
    ]
    nodes = core.list_node().items
    cfg = haproxy_settings(Path(args.haproxy_config).read_text())
    found = [
        checks.gateway_selector(
            gateway["spec"].get("selector") or {}, pods[0].metadata.labels if pods else {}
        )
    ]
    port = int(gateway["spec"]["servers"][0]["port"]["number"])
    listening: dict[str, list[str]] = {}
    for p in pods:
        try:
            doc = PortForwardAdmin(core, ns, p.metadata.name).get_json(
                "/listeners", {"format": "json"}
            )
        except (OSError, ValueError):
            doc = {}
        listening[p.metadata.name] = envoy.listener_addresses(doc)
    found.append(checks.envoy_listener(port, listening))
    found.append(checks.proxy_volumes(deployment["spec"]["template"]["spec"]))
    found.append(
        checks.no_restarts(
            {
                f"{p.metadata.name}/{c.name}": c.restart_count
                for p in pods
                for c in p.status.container_statuses or []
            }
        )
    )
    # the check targets are the Service's port names
    node_port = next(
        sp["nodePort"] for sp in service["spec"]["ports"] if sp["name"] == mode.lb.check
    )

    def answer(address: str) -> int | None:  # the seed's curl test, from the controller
        try:
            with urllib.request.urlopen(
                f"http://{address}:{node_port}{mode.lb.check_uri}", timeout=2
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    addresses = {
        n.metadata.name: next(a.address for a in n.status.addresses if a.type == "InternalIP")
        for n in nodes
    }
    # a replica the scheduler has not placed (no seat under anti-affinity) is on no node
    placed = {p.spec.node_name for p in pods if p.spec.node_name}
    found.append(
        checks.node_local_check({name: answer(addr) for name, addr in addresses.items()}, placed)
    )
    found.append(checks.lb_topology(args.lb_host, placed))
    schedulable = [
        n
        for n in nodes
        if not n.spec.unschedulable
        and not any(t.effect in ("NoSchedule", "NoExecute") for t in n.spec.taints or [])
    ]
    found.append(rollout_check(deployment, len(schedulable)))
    try:
        rule = custom.get_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "destinationrules", args.backend
        )
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        rule = {}  # none: Envoy's default idle timeout, which the timing check judges
    docs = {
        "gateway": deployment,
        "backend": backend,
        "virtualservice": vs,
        "destinationrule": rule,
    }
    found.append(checks.timing_budget(args.profile, deployed_timing(docs, cfg)))
    # Istio leaves the gateway's HTTP idle_timeout at Envoy's default unless a
    # DestinationRule or EnvoyFilter changes it
    found.append(checks.keepalive(2 * cfg["pool_purge_delay_s"], ENVOY_DEFAULT_IDLE_S))
    states = json.loads(Path(args.lb_states).read_text())
    found.append(
        checks.lb_servers_up(
            {
                f"{lb}/{server}": st
                for lb, servers in states.items()
                for server, st in servers.items()
            }
        )
    )
    found.append(tls_check(args.haproxy_address))
    found.append(
        checks.timeout_server(
            cfg.get("haproxy_timeout_server_s", 0),
            duration_seconds(vs["spec"]["http"][0]["timeout"]),
        )
    )
    return found
