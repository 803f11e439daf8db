"""Duration strings as the deployed objects write them, read back into seconds: Istio's
and Envoy's (protobuf Duration in YAML: `150s`, `500ms`, `1m`) and HAProxy's (`500ms`,
`2s`, a bare number of milliseconds). runbook.model.timing writes them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def duration_seconds(duration: str) -> float:
    """`150s` -> 150.0, `500ms` -> 0.5, `1m` -> 60.0 (proxyConfig's drain durations, a
    VirtualService's timeout)."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    if duration.endswith("s"):
        return float(duration[:-1])
    if duration.endswith("m"):
        return float(duration[:-1]) * 60
    raise ValueError(f"duration {duration!r}: expected e.g. 150s, 500ms or 1m")


def destination_rule_idle_s(rule: Mapping[str, Any]) -> float | None:
    """The idle timeout a DestinationRule gives its host's upstream connections
    (`trafficPolicy.connectionPool.http.idleTimeout`), or None where it sets none."""
    pool = rule.get("spec", {}).get("trafficPolicy", {}).get("connectionPool", {})
    idle = pool.get("http", {}).get("idleTimeout")
    return None if idle is None else duration_seconds(idle)


def haproxy_seconds(text: str) -> float:
    """HAProxy's time syntax: `500ms`, `2s`, `1m`, or a bare number of ms."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"not an HAProxy duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1e-3}
    return float(m.group(1)) * scale[m.group(2)]
