"""Envoy bootstrap for a gateway pod's istio-proxy, without istiod.

Istio builds the gateway's listener from the Gateway and VirtualService; here we write
the same shape statically. Names follow what istiod generates so that stats filters
written for the cluster work unchanged: listener `0.0.0.0_<port>`, HTTP connection
manager stat prefix `outbound_0.0.0.0_<port>;` (gateway listeners are OUTBOUND; the `;` is
Istio 1.30's, as istiod on onebox writes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..model.registry import (
    ENVOY_ACCESS_LOG_FLUSH_MS,
    ENVOY_ACCESS_LOG_FORMAT,
    OBJECTS,
    PORTS,
    gateway_stat_prefix,
)


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int


def backend_cluster_name(port: int) -> str:
    """Istio's name for the backend Service's port as an outbound cluster."""
    return f"outbound|{port}||{OBJECTS.backend}.{OBJECTS.namespace}.svc.cluster.local"


def gateway_bootstrap(
    *,
    listen_host: str,
    listen_port: int,
    admin_host: str,
    admin_port: int,
    upstreams: Sequence[Upstream],
    route_timeout_s: float,
    upstream_idle_s: float | None = None,
    cluster_name: str = backend_cluster_name(PORTS.backend),
    grpc_upstreams: Sequence[Upstream] = (),
    grpc_route_prefix: str | None = None,
    with_listener: bool = True,
) -> dict[str, object]:
    """A static bootstrap: one HTTP listener routing `/` to `upstreams` and, given
    them, `grpc_route_prefix` to `grpc_upstreams` over HTTP/2 (what Istio makes of the
    VirtualService's gRPC route to a Service port with appProtocol grpc). Without the
    listener (a Gateway whose selector matches no label of this pod), Envoy runs and is
    ready but nothing listens on the Gateway's port: connection refused, no error log."""
    routes = [_route("/", cluster_name, route_timeout_s)]
    clusters = [_cluster(cluster_name, upstreams, upstream_idle_s, http2=False)]
    if grpc_upstreams and grpc_route_prefix:
        grpc_cluster = backend_cluster_name(grpc_upstreams[0].port)
        # first: routes match in order
        routes.insert(0, _route(grpc_route_prefix, grpc_cluster, route_timeout_s))
        clusters.append(_cluster(grpc_cluster, grpc_upstreams, upstream_idle_s, http2=True))
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": gateway_stat_prefix(listen_port),
        # WebSocket through the gateway, as Istio configures its gateways by default
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        # the access log the homelab's meshConfig asks of Istio: the same JSON keys
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                    "StdoutAccessLog",
                    "log_format": {"json_format": ENVOY_ACCESS_LOG_FORMAT},
                },
            }
        ],
        "route_config": {
            "name": f"http.{listen_port}",
            "virtual_hosts": [
                {
                    "name": "*",
                    "domains": ["*"],
                    "routes": routes,
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": f"0.0.0.0_{listen_port}",
        "address": _address(listen_host, listen_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }
                ]
            }
        ],
    }
    return {
        "admin": {"address": _address(admin_host, admin_port)},
        "static_resources": {
            "listeners": [listener] if with_listener else [],
            "clusters": clusters,
        },
    }


def _route(prefix: str, cluster: str, timeout_s: float) -> dict[str, object]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": f"{timeout_s}s"}}


def _cluster(
    name: str, upstreams: Sequence[Upstream], idle_s: float | None, http2: bool
) -> dict[str, object]:
    cluster: dict[str, object] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _address(u.host, u.port)}} for u in upstreams
                    ]
                }
            ],
        },
    }
    options: dict[str, object] = {}
    if idle_s is not None:
        # what Istio renders from a DestinationRule's connectionPool.http.idleTimeout
        options["common_http_protocol_options"] = {"idle_timeout": f"{idle_s}s"}
    if http2 or options:
        options["explicit_http_config"] = (
            {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
        )
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                **options,
            }
        }
    return cluster


def envoy_args(config_path: str, drain_time_s: int) -> list[str]:
    """Flags as pilot-agent passes them, minus hot restart (several Envoys share a host)."""
    return [
        "-c",
        config_path,
        "--drain-time-s",
        str(drain_time_s),
        "--drain-strategy",
        "immediate",
        "--disable-hot-restart",
        "--log-level",
        "warning",
        # pilot-agent's flag, with the homelab's interval (registry)
        "--file-flush-interval-msec",
        str(ENVOY_ACCESS_LOG_FLUSH_MS),
    ]


def _address(host: str, port: int) -> dict[str, object]:
    return {"socket_address": {"address": host, "port_value": port}}
