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


def gateway_bootstrap(
    *,
    listen_host: str,
    listen_port: int,
    admin_host: str,
    admin_port: int,
    upstreams: Sequence[Upstream],
    route_timeout_s: float,
    upstream_idle_s: float | None = None,
    cluster_name: str = (
        f"outbound|{PORTS.backend}||{OBJECTS.backend}.{OBJECTS.namespace}.svc.cluster.local"
    ),
    with_listener: bool = True,
) -> dict[str, object]:
    """A static bootstrap: one HTTP listener routing `/` to `upstreams`. Without the
    listener (a Gateway whose selector matches no label of this pod), Envoy runs and is
    ready but nothing listens on the Gateway's port: connection refused, no error log."""
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
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": cluster_name, "timeout": f"{route_timeout_s}s"},
                        }
                    ],
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
    cluster: dict[str, object] = {
        "name": cluster_name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": cluster_name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _address(u.host, u.port)}} for u in upstreams
                    ]
                }
            ],
        },
    }
    if upstream_idle_s is not None:
        # what Istio renders from a DestinationRule's connectionPool.http.idleTimeout
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": f"{upstream_idle_s}s"},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return {
        "admin": {"address": _address(admin_host, admin_port)},
        "static_resources": {
            "listeners": [listener] if with_listener else [],
            "clusters": [cluster],
        },
    }


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
