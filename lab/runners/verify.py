"""`playbooks/verify.yml`: gather what the seed's manual checks look at, judge it
(lab.analysis.checks) and write `artifacts/verify-<UTC stamp>.json`. Exit 1 when a
check fails.

Local lab: bring the mode's pods up behind the lab's HAProxy, read every fact from a
real process (Envoy's admin `/listeners`, HTTP through each node's NodePort, HAProxy's
runtime API, TLS handshakes with its frontend), stop the pods.

    python -m lab.runners.verify local --mode ordered --lab-index 200 \
        --lab-dir .lab/200/verify --manifests .lab/200/manifests \
        --haproxy-socket .lab/200/admin.sock --haproxy-config .lab/200/haproxy.cfg \
        --haproxy-address 127.230.0.100:8443

Homelab (tested only on a cluster): the same checks from the Kubernetes API (objects,
pod status, Envoy's `/listeners` through a port-forward), the seed's curl test against
every node's check NodePort from the controller, TLS against the LB host, and the
workers' HAProxy states and config that the playbook read on each worker.

    python -m lab.runners.verify homelab --mode improved --context homelab \
        --namespace service-a --lb-states states.json --haproxy-config lb.cfg \
        --haproxy-address 192.168.56.11:443
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import ssl
import sys
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..analysis import checks
from ..artifacts.events import CollectedDir
from ..artifacts.rundir import utc_stamp, write_json
from ..collectors import haproxy as haproxy_collector
from ..localcluster.cluster import LabCluster
from ..localcluster.manifests import Manifests, seconds
from ..localcluster.topology import NODES, Topology
from ..model import registry, timing

#: HAProxy purges idle server connections every `pool-purge-delay` (5 s unless set),
#: half of them each time: an idle connection may live about twice that.
HAPROXY_POOL_PURGE_DELAY_S = 5.0
#: Envoy's HTTP connection manager closes idle downstream connections after this unless
#: configured (common_http_protocol_options.idle_timeout: 1 h).
ENVOY_DEFAULT_IDLE_S = 3600.0


def haproxy_seconds(text: str) -> float:
    """HAProxy's time syntax: `500ms`, `2s`, `1m`, or a bare number of ms."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"not an HAProxy duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1e-3}
    return float(m.group(1)) * scale[m.group(2)]


def haproxy_settings(cfg: str) -> dict[str, float]:
    """The timing inputs an HAProxy config carries (first server line, defaults)."""
    out: dict[str, float] = {}
    for key, name in (("server", "haproxy_timeout_server_s"), ("check", "haproxy_check_timeout_s")):
        m = re.search(rf"^\s*timeout {key}\s+(\S+)", cfg, re.M)
        if m:
            out[name] = haproxy_seconds(m.group(1))
    m = re.search(r"^\s*server \S+ \S+ check .*?inter (\S+) fall (\d+) rise (\d+)", cfg, re.M)
    if m:
        out["haproxy_inter_s"] = haproxy_seconds(m.group(1))
        out["haproxy_fall"] = int(m.group(2))
        out["haproxy_rise"] = int(m.group(3))
    m = re.search(r"^\s*pool-purge-delay\s+(\S+)", cfg, re.M)
    out["pool_purge_delay_s"] = haproxy_seconds(m.group(1)) if m else HAPROXY_POOL_PURGE_DELAY_S
    return out


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def deployed_timing(docs: dict[str, dict[str, Any]], cfg: dict[str, float]) -> dict[str, float]:
    """The timing model's inputs as deployed: read back from the manifests and HAProxy."""
    gw, backend, vs = docs["gateway"], docs["backend"], docs["virtualservice"]
    gw_pod, be_pod = gw["spec"]["template"]["spec"], backend["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in gw_pod["containers"]}
    proxy_env = _env(containers["istio-proxy"])
    proxy = json.loads(proxy_env["PROXY_CONFIG"])
    out: dict[str, float] = {
        "gateway_grace_s": gw_pod["terminationGracePeriodSeconds"],
        "envoy_drain_s": seconds(proxy["terminationDrainDuration"]),
        "envoy_listener_drain_s": seconds(proxy["drainDuration"]),
        "vs_timeout_s": seconds(vs["spec"]["http"][0]["timeout"]),
        "backend_grace_s": be_pod["terminationGracePeriodSeconds"],
        "backend_shutdown_timeout_s": float(_env(be_pod["containers"][0])["SHUTDOWN_TIMEOUT"]),
    }
    if "MINIMUM_DRAIN_DURATION" in proxy_env:
        out["minimum_drain_s"] = seconds(proxy_env["MINIMUM_DRAIN_DURATION"])
    hc_env = _env(containers["hc"]) if "hc" in containers else {}
    for var, key in (
        ("DRAIN_TIMEOUT", "drain_timeout_s"),
        ("LB_BUFFER", "lb_buffer_s"),
        ("POLL_INTERVAL", "poll_interval_s"),
        ("CURL_MAX_TIME", "curl_max_time_s"),
        ("NOLB_WAIT", "nolb_wait_s"),
    ):
        if var in hc_env:
            out[key] = float(hc_env[var])
    out.update({k: v for k, v in cfg.items() if k != "pool_purge_delay_s"})
    return {k: (int(v) if float(v).is_integer() else v) for k, v in out.items()}


def raw_docs(directory: Path, mode_file: str) -> dict[str, dict[str, Any]]:
    def load(name: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all((directory / name).read_text()) if d]

    return {
        "gateway": next(d for d in load(mode_file) if d["kind"] == "Deployment"),
        "backend": next(d for d in load("10-backend.yaml") if d["kind"] == "Deployment"),
        "virtualservice": load("31-virtualservice.yaml")[0],
    }


def tls_accepts(address: str, version: ssl.TLSVersion) -> bool:
    """Whether the frontend completes a handshake offering only `version`."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # let this client offer old versions at all, so a refusal is the server's
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # offering TLS 1.1 is the point of the probe
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    try:
        with (
            socket.create_connection((host, int(port)), timeout=3) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            return tls.version() is not None
    except (ssl.SSLError, OSError):
        return False


def listener_addresses(doc: dict[str, Any]) -> list[str]:
    """`host:port` of each listener in Envoy's `/listeners?format=json`."""
    out = []
    for status in doc.get("listener_statuses", []):
        addr = status.get("local_address", {}).get("socket_address", {})
        out.append(f"{addr.get('address')}:{addr.get('port_value')}")
    return out


async def listeners(http: aiohttp.ClientSession, admin: str) -> list[str]:
    try:
        async with http.get(f"{admin}/listeners", params={"format": "json"}) as r:
            return listener_addresses(await r.json(content_type=None))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []


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
    lab_dir = Path(args.lab_dir)
    # scratch of the previous verification (the report is the artifact, not this)
    shutil.rmtree(lab_dir, ignore_errors=True)
    lab_dir.mkdir(parents=True)
    collected = CollectedDir(lab_dir)
    cluster = LabCluster(Topology(args.lab_index), manifests, lab_dir / "lab", collected)
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
) -> list[checks.Check]:
    """Every check against a local lab whose pods run (the verify playbook's, or an
    experiment run's right after its bring-up). `tls`: the frontend offloads TLS (a
    plain-HTTP frontend, as some tests run, has no TLS to check)."""
    mode = registry.mode(mode_name)
    manifests = cluster.manifests
    docs = raw_docs(manifests_dir, mode.manifest)
    cfg = haproxy_settings(haproxy_config.read_text())
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
                {p.name: await listeners(http, f"http://{p.ip}:15000") for p in gw},
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
        # the lab's HAProxy has an address of its own, not a node's
        found.append(checks.lb_topology(None, {p.node for p in gw}))
        # master1 is untainted in the lab, as the untaint role leaves it
        found.append(rollout_check(docs["gateway"], len(NODES)))
        found.append(checks.timing_budget(profile, deployed_timing(docs, cfg)))
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
    the names the manifests role renders; tested only on a cluster."""
    import urllib.error
    import urllib.request

    from kubernetes import client, config

    from ..collectors.kube import PortForwardAdmin
    from .homelab import GATEWAY_SELECTOR

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
        for p in core.list_namespaced_pod(ns, label_selector=GATEWAY_SELECTOR).items
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
        listening[p.metadata.name] = listener_addresses(doc)
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
    found.append(
        checks.node_local_check(
            {name: answer(addr) for name, addr in addresses.items()},
            {p.spec.node_name for p in pods},
        )
    )
    found.append(checks.lb_topology(args.lb_host, {p.spec.node_name for p in pods}))
    schedulable = [
        n
        for n in nodes
        if not n.spec.unschedulable
        and not any(t.effect in ("NoSchedule", "NoExecute") for t in n.spec.taints or [])
    ]
    found.append(rollout_check(deployment, len(schedulable)))
    docs = {"gateway": deployment, "backend": backend, "virtualservice": vs}
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
            cfg.get("haproxy_timeout_server_s", 0), seconds(vs["spec"]["http"][0]["timeout"])
        )
    )
    return found


def report(found: list[checks.Check], artifacts: Path, target: str, mode: str) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"verify-{utc_stamp()}.json"
    write_json(
        path,
        {
            "target": target,
            "mode": mode,
            "passed": all(c.result == "pass" for c in found),
            "checks": [c.as_dict() for c in found],
        },
    )
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="target", required=True)
    local = sub.add_parser("local", help="the local lab (real processes)")
    homelab = sub.add_parser("homelab", help="the kubeadm homelab (Kubernetes API)")
    for q in (local, homelab):
        q.add_argument("--mode", required=True, choices=list(registry.MODES))
        q.add_argument("--profile", default="quick", choices=list(timing.PROFILES))
        q.add_argument("--haproxy-config", required=True)
        q.add_argument("--haproxy-address", required=True, help="HOST:PORT of the HTTPS frontend")
        q.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    local.add_argument("--lab-index", type=int, required=True)
    local.add_argument("--lab-dir", required=True, help="scratch files of the verification's pods")
    local.add_argument("--manifests", required=True)
    local.add_argument("--haproxy-socket", required=True)
    homelab.add_argument("--context", required=True)
    homelab.add_argument("--namespace", default="service-a")
    homelab.add_argument("--deployment", default="service-a-igw")
    homelab.add_argument("--backend", default="backend")
    homelab.add_argument("--gateway", default="service-a-gateway")
    homelab.add_argument("--virtualservice", default="service-a")
    homelab.add_argument("--lb-host", required=True, help="the node the experiment's LB runs on")
    homelab.add_argument(
        "--lb-states", required=True, help="JSON {lb host: {server: status}} read on each worker"
    )
    args = p.parse_args()
    found = asyncio.run(gather_local(args)) if args.target == "local" else gather_homelab(args)
    path = report(found, args.artifacts, args.target, args.mode)
    print(checks.table(found))
    failed = [c.name for c in found if c.result == "fail"]
    print(f"\n{len(found) - len(failed)} of {len(found)} checks passed; report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
