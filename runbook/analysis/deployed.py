"""The timing model's inputs as deployed: read back from the rendered manifests and
HAProxy's config, so that verify compares what runs with what the model derived."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..model.durations import destination_rule_idle_s, duration_seconds

#: Envoy closes an idle connection, downstream (the HTTP connection manager's) or
#: upstream (a cluster's), after this unless configured
#: (common_http_protocol_options.idle_timeout: 1 h).
ENVOY_DEFAULT_IDLE_S = 3600.0


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def deployed_timing(docs: dict[str, dict[str, Any]], cfg: dict[str, float]) -> dict[str, float]:
    """The timing model's inputs as deployed: read back from the manifests and HAProxy
    (`docs`: the gateway and backend Deployments, the VirtualService and, if there is
    one, the backend's DestinationRule)."""
    gw, backend, vs = docs["gateway"], docs["backend"], docs["virtualservice"]
    gw_pod, be_pod = gw["spec"]["template"]["spec"], backend["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in gw_pod["containers"]}
    proxy_env = _env(containers["istio-proxy"])
    backend_env = _env(be_pod["containers"][0])
    proxy = json.loads(proxy_env["PROXY_CONFIG"])
    out: dict[str, float] = {
        "gateway_grace_s": gw_pod["terminationGracePeriodSeconds"],
        "envoy_drain_s": duration_seconds(proxy["terminationDrainDuration"]),
        "envoy_listener_drain_s": duration_seconds(proxy["drainDuration"]),
        "vs_timeout_s": duration_seconds(vs["spec"]["http"][0]["timeout"]),
        "backend_grace_s": be_pod["terminationGracePeriodSeconds"],
        "backend_shutdown_timeout_s": float(backend_env["SHUTDOWN_TIMEOUT"]),
    }
    if "KEEPALIVE_TIMEOUT" in backend_env:
        out["backend_keepalive_s"] = float(backend_env["KEEPALIVE_TIMEOUT"])
    # no DestinationRule (or none that sets it): Envoy keeps idle upstream connections
    # for its default hour
    idle = destination_rule_idle_s(docs.get("destinationrule") or {})
    out["gateway_upstream_idle_s"] = ENVOY_DEFAULT_IDLE_S if idle is None else idle
    if "MINIMUM_DRAIN_DURATION" in proxy_env:
        out["minimum_drain_s"] = duration_seconds(proxy_env["MINIMUM_DRAIN_DURATION"])
    hc_env = _env(containers["hc"]) if "hc" in containers else {}
    for var, key in (
        ("DRAIN_TIMEOUT", "drain_timeout_s"),
        ("LB_BUFFER", "lb_buffer_s"),
        ("POLL_INTERVAL", "poll_interval_s"),
        ("CURL_MAX_TIME", "curl_max_time_s"),
        ("NOLB_WAIT", "nolb_wait_s"),
        ("ENDPOINT_SYNC_WAIT", "endpoint_sync_s"),
    ):
        if var in hc_env:
            out[key] = float(hc_env[var])
    out.update({k: v for k, v in cfg.items() if k != "pool_purge_delay_s"})
    return {k: (int(v) if float(v).is_integer() else v) for k, v in out.items()}


def raw_docs(directory: Path, mode_file: str) -> dict[str, dict[str, Any]]:
    def load(name: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all((directory / name).read_text()) if d]

    routing = load("31-virtualservice.yaml")
    return {
        "gateway": next(d for d in load(mode_file) if d["kind"] == "Deployment"),
        "backend": next(d for d in load("10-backend.yaml") if d["kind"] == "Deployment"),
        "virtualservice": routing[0],
        "destinationrule": next((d for d in routing if d["kind"] == "DestinationRule"), {}),
    }
