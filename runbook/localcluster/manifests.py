"""The rendered manifests, read as the local lab needs them: each pod template's
containers, probes, env and preStop, the ports, the route timeout and PROXY_CONFIG."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..model.durations import destination_rule_idle_s, duration_seconds


@dataclass(frozen=True, slots=True)
class Probe:
    path: str
    port: int
    period_s: float
    failure_threshold: int
    #: `httpGet` or `grpc` (gRPC's health protocol; `path` is then empty)
    kind: str = "httpGet"

    @classmethod
    def from_manifest(cls, probe: dict[str, Any] | None) -> Probe | None:
        if not probe:
            return None
        kind = "grpc" if "grpc" in probe else "httpGet"
        return cls(
            probe[kind].get("path", ""),
            int(probe[kind]["port"]),
            float(probe.get("periodSeconds", 10)),
            int(probe.get("failureThreshold", 3)),
            kind,
        )


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    image: str
    env: list[dict[str, Any]]
    readiness: Probe | None
    liveness: Probe | None
    prestop: list[str] | None
    #: the container's `command` (None: the image's entrypoint)
    command: list[str] | None = None

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
            list(c["command"]) if c.get("command") else None,
        )

    @property
    def module(self) -> str | None:
        """The Python module the command runs (`python -m <module>`), if it names one."""
        if self.command and "-m" in self.command[:-1]:
            return self.command[self.command.index("-m") + 1]
        return None


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
    node_ports_by_name: dict[str, int]  # the Service port's name -> its nodePort
    proxy_config: dict[str, Any]
    # the NodePort Service's externalTrafficPolicy (Kubernetes' default: Cluster)
    traffic_policy: str = "Cluster"
    # the Gateway's selector: istiod gives a proxy the Gateway's listeners only if its
    # pod's labels match it
    gateway_selector: dict[str, str] | None = None
    # the backend DestinationRule's connectionPool.http.idleTimeout: how long the
    # gateway keeps an idle connection to the backend (None: Envoy's hour)
    upstream_idle_s: float | None = None
    # the backend Service's port `grpc` and the route to it (None: no gRPC service)
    backend_grpc_port: int | None = None
    grpc_route_prefix: str | None = None

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
        rule = next((d for d in docs if d["kind"] == "DestinationRule"), {})
        proxy = next(
            c
            for c in gw_deploy["spec"]["template"]["spec"]["containers"]
            if c["name"] == "istio-proxy"
        )
        proxy_config = json.loads(
            next(e["value"] for e in proxy["env"] if e["name"] == "PROXY_CONFIG")
        )
        be_ports = {p.get("name", "http"): int(p["targetPort"]) for p in be_svc["spec"]["ports"]}
        routes = {route["match"][0]["uri"]["prefix"]: route for route in vs["spec"]["http"]}
        grpc_prefix = next((p for p in routes if p != "/"), None)
        return cls(
            gateway=PodTemplate.from_deployment(gw_deploy),
            backend=PodTemplate.from_deployment(be_deploy),
            backend_port=be_ports["http"],
            gateway_port=int(gateway["spec"]["servers"][0]["port"]["number"]),
            route_timeout_s=duration_seconds(routes["/"]["timeout"]),
            node_ports={int(p["nodePort"]): int(p["targetPort"]) for p in gw_svc["spec"]["ports"]},
            node_ports_by_name={p["name"]: int(p["nodePort"]) for p in gw_svc["spec"]["ports"]},
            proxy_config=proxy_config,
            traffic_policy=gw_svc["spec"].get("externalTrafficPolicy", "Cluster"),
            gateway_selector=dict(gateway["spec"].get("selector") or {}),
            upstream_idle_s=destination_rule_idle_s(rule),
            backend_grpc_port=be_ports.get("grpc"),
            grpc_route_prefix=grpc_prefix,
        )
