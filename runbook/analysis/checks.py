"""The verify playbook's checks: the manual checks after applying the manifests and the
pitfalls that break the experiment silently, each a small pure function from observed
facts to a result that says what is wrong and how to fix it.

The facts are gathered elsewhere (runbook.runners.premise_checks: the local lab's real processes,
or the Kubernetes API and the workers' HAProxy on the homelab); here only the judgment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..model import timing

#: Where istio-proxy expects its SDS/UDS sockets, credentials and tokens (Istio's
#: injection template): with readOnlyRootFilesystem each needs a volume, or the proxy
#: crash-loops.
PROXY_MOUNTS = {
    "/var/run/secrets/workload-spiffe-uds": "workload-socket",
    "/var/run/secrets/credential-uds": "credential-socket",
    "/var/run/secrets/workload-spiffe-credentials": "workload-certs",
    "/var/run/secrets/istio": "istiod-ca-cert",
    "/var/lib/istio/data": "istio-data",
    "/etc/istio/proxy": "istio-envoy",
    "/var/run/secrets/tokens": "istio-token",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    result: str  # "pass" or "fail"
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _check(name: str, ok: bool, detail: str, fix: str) -> Check:
    return Check(name, "pass" if ok else "fail", detail, "" if ok else fix)


def gateway_selector(selector: Mapping[str, str], pod_labels: Mapping[str, str]) -> Check:
    missing = {k: v for k, v in selector.items() if pod_labels.get(k) != v}
    return _check(
        "gateway_selector_matches_pods",
        bool(selector) and not missing,
        f"Gateway selector {dict(selector)}; gateway pod labels {dict(pod_labels)}"
        + (f"; not matched: {missing}" if missing else ""),
        "make the Gateway's spec.selector a subset of the gateway pods' labels "
        "(manifests_selector_label); with no match istiod gives the proxy no listener: "
        "connection refused on the gateway port, and no error in any log",
    )


def envoy_listener(port: int, listeners: Mapping[str, list[str]]) -> Check:
    """`listeners`: pod -> the addresses its Envoy listens on (`host:port`)."""
    without = [
        pod for pod, addrs in listeners.items() if not any(a.endswith(f":{port}") for a in addrs)
    ]
    return _check(
        "envoy_listens_on_gateway_port",
        bool(listeners) and not without,
        f"port {port}: "
        + ", ".join(f"{pod} {sorted(addrs) or 'no listener'}" for pod, addrs in listeners.items()),
        f"{', '.join(without) or 'no gateway pod'} has no listener on {port}: check the Gateway "
        "selector, its server port and that istiod pushed config (istioctl proxy-status)",
    )


def proxy_volumes(pod_spec: Mapping[str, Any]) -> Check:
    volumes = {v["name"] for v in pod_spec.get("volumes", [])}
    proxy = next((c for c in pod_spec.get("containers", []) if c.get("name") == "istio-proxy"), {})
    mounts = {m["mountPath"]: m["name"] for m in proxy.get("volumeMounts", [])}
    problems = [
        f"{path} not mounted" if path not in mounts else f"{path}: volume {mounts[path]!r} missing"
        for path in PROXY_MOUNTS
        if path not in mounts or mounts[path] not in volumes
    ]
    return _check(
        "proxy_volumes_mounted",
        not problems,
        "; ".join(problems) or f"all {len(PROXY_MOUNTS)} SDS/UDS and token mounts have volumes",
        "add the missing volume and mount (emptyDir for the sockets and credentials, the "
        "projected istio-token, the istio-ca-root-cert ConfigMap): with a read-only root "
        "filesystem istio-proxy has nowhere else to put them and crash-loops",
    )


def no_restarts(restarts: Mapping[str, int]) -> Check:
    """`restarts`: `pod/container` -> restart count."""
    restarting = {k: n for k, n in restarts.items() if n}
    return _check(
        "no_gateway_container_restarting",
        bool(restarts) and not restarting,
        f"restarts: {dict(restarts) or 'no gateway container found'}",
        f"{restarting}: read `kubectl logs --previous` of each; a liveness probe on a path "
        "the drain fails (the seed's current mode) restarts hc mid-termination",
    )


def node_local_check(answers: Mapping[str, int | None], with_pod: set[str]) -> Check:
    """`answers`: node -> HTTP status of hc's check through that node's NodePort (None: no
    answer). Node-local means 200 exactly where a gateway pod runs."""
    wrong = {n: a for n, a in answers.items() if (a == 200) is not (n in with_pod)}
    trap = [n for n in answers if n not in with_pod and answers[n] == 200]
    detail = ", ".join(
        f"{n} ({'pod' if n in with_pod else 'no pod'}): {a or 'no answer'}"
        for n, a in answers.items()
    )
    if trap:
        fix = (
            f"{', '.join(trap)} answers the check without a gateway pod: the Cluster-policy "
            "trap (kube-proxy forwards through SNAT and HAProxy sends that node traffic); set "
            "externalTrafficPolicy: Local on the gateway's NodePort Service"
        )
    else:
        fix = "a node with a gateway pod must answer 200 on the check NodePort: is hc ready?"
    return _check(
        "health_check_is_node_local",
        bool(with_pod) and len(answers) > len(with_pod) and not wrong,
        detail,
        fix,
    )


def rollout_seats(
    replicas: int, max_surge: int, max_unavailable: int, required_anti_affinity: bool, nodes: int
) -> Check:
    need = replicas + max_surge if max_unavailable == 0 else replicas
    ok = not required_anti_affinity or need <= nodes
    return _check(
        "rollout_has_seats",
        ok,
        f"{replicas} replicas + maxSurge {max_surge} (maxUnavailable {max_unavailable}) with "
        f"{'required' if required_anti_affinity else 'no required'} one-per-node anti-affinity "
        f"on {nodes} schedulable nodes",
        f"a rollout needs {need} nodes and {nodes} are schedulable: the surge pod stays "
        "Pending and the rollout never ends; untaint master1 (the untaint role) or lower "
        "replicas",
    )


def timing_budget(
    profile: str, deployed: Mapping[str, float], planned: Mapping[str, Any] | None = None
) -> Check:
    """The deployed numbers through the same checker the manifests role uses. What was
    not read back comes from `planned` (the budget the run was planned with, timing
    overrides included: a mode without hc deploys no LB_BUFFER), else the profile."""
    inputs = timing.profile_inputs(profile)
    base = {k: v for k, v in (planned or {}).items() if k in inputs}
    try:
        violations = timing.check(timing.derive(profile, {**base, **deployed}))
    except timing.TimingInputError as exc:
        return _check("timing_budget_holds", False, str(exc), "fix the deployed value named")
    return _check(
        "timing_budget_holds",
        not violations,
        "; ".join(f"[{v.rule}] {v.message}" for v in violations)
        or f"{len(deployed)} deployed values read back, every rule holds",
        "change the deployed values (or the timing inputs and re-render) until the rules hold",
    )


def keepalive(haproxy_idle_s: float, gateway_idle_s: float) -> Check:
    return _check(
        "lb_idle_connections_end_before_the_gateway_s",
        haproxy_idle_s < gateway_idle_s,
        f"HAProxy keeps an idle server connection up to {haproxy_idle_s:g}s; the gateway "
        f"closes idle connections after {gateway_idle_s:g}s",
        "the first request on a connection the gateway has just closed is a 502: keep "
        "HAProxy's idle server connections (timeout server / http-keep-alive) shorter than "
        "the gateway's idle_timeout",
    )


def lb_servers_up(states: Mapping[str, str]) -> Check:
    down = {s: st for s, st in states.items() if st != "UP"}
    return _check(
        "lb_sees_every_worker_up",
        bool(states) and not down,
        ", ".join(f"{s} {st}" for s, st in states.items()) or "no server in the backend",
        f"{', '.join(down) or 'HAProxy'}: read HAProxy's log (Health check ... failed, "
        "reason) and curl the check NodePort from the LB host",
    )


def tls_versions(accepted: Mapping[str, bool]) -> Check:
    """`accepted`: TLS version -> whether the frontend completed a handshake with it."""
    ok = accepted.get("TLSv1.2", False) and not accepted.get("TLSv1.1", True)
    return _check(
        "lb_tls_1_2_plus_only",
        ok,
        ", ".join(f"{v} {'accepted' if a else 'refused'}" for v, a in accepted.items()),
        "bind the HTTPS frontend with ssl-min-ver TLSv1.2 (the haproxy role does)",
    )


def timeout_server(haproxy_timeout_server_s: float, vs_timeout_s: float) -> Check:
    return _check(
        "lb_timeout_server_covers_route_timeout",
        haproxy_timeout_server_s >= vs_timeout_s,
        f"HAProxy timeout server {haproxy_timeout_server_s:g}s, VirtualService timeout "
        f"{vs_timeout_s:g}s",
        "raise HAProxy's timeout server to at least the VirtualService timeout, or HAProxy "
        "answers 504 to a request the gateway would still carry",
    )


def lb_topology(lb_host: str | None, nodes_with_pod: set[str]) -> Check:
    """kube-proxy sends traffic that starts on a node to any ready endpoint, whatever
    externalTrafficPolicy says: an LB on a gateway node never sees that node's gateway
    go away through its own NodePort. The experiment needs a gateway on a node that is
    not the LB's (`lb_host` None: the LB has an address of its own, on no node)."""
    others = sorted(n for n in nodes_with_pod if n != lb_host)
    where = "its own address" if lb_host is None else f"node {lb_host}"
    return _check(
        "lb_is_not_the_terminated_gateway_s_node",
        bool(others),
        f"LB on {where}; gateway pods on {sorted(nodes_with_pod) or 'no node'}",
        "run the experiment's LB (experiment_lb_host) on a worker whose gateway is not the "
        "one terminated, or on a host that is not a node; with a single gateway node the "
        "premise cannot hold",
    )


def table(checks: list[Check]) -> str:
    rows = [("check", "result", "detail"), *((c.name, c.result, c.detail) for c in checks)]
    width = [max(len(r[i]) for r in rows) for i in (0, 1)]
    lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows]
    lines += [f"  fix {c.name}: {c.fix}" for c in checks if c.result == "fail"]
    return "\n".join(lines)
