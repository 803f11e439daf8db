"""Each gateway Envoy's data-plane active-request gauge, polled, as events.

The gauge is read from `/stats?format=json&filter=<regex>`; how the admin API is
reached is the caller's: an HTTP GET on the local lab, a port-forward through the
Kubernetes API on the homelab (`kube.PortForwardAdmin`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from ..artifacts.events import EventLog
from ..model import registry

StatsFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


def active_stat_regex(gateway_port: int) -> str:
    """The gateway's data-plane connection manager only (docs/design.md: the admin's own
    /stats request and the overflow counters must not be counted)."""
    return f"^{registry.gateway_active_stat_regex(gateway_port)}$"


def active_from_stats(doc: Mapping[str, Any]) -> int | None:
    """The summed gauge from Envoy's JSON stats, or None when no stat matched (unknown)."""
    values = [
        s["value"]
        for s in doc.get("stats", [])
        if isinstance(s, dict) and isinstance(s.get("value"), int)
    ]
    return sum(values) if values else None


def http_fetcher(session: aiohttp.ClientSession, admin_url: str, regex: str) -> StatsFetcher:
    async def fetch() -> Mapping[str, Any]:
        params = {"format": "json", "filter": regex}
        async with session.get(f"{admin_url}/stats", params=params) as r:
            r.raise_for_status()
            return await r.json(content_type=None)

    return fetch


async def poll_active(
    sink: EventLog, fetchers: Mapping[str, StatsFetcher], interval_s: float = 0.2
) -> None:
    """One `active_requests` event per pod each time its gauge changes (None: unreadable).
    `fetchers` may gain pods while this runs (the homelab's replacements): each round
    reads the pods it has then."""
    last: dict[str, int | None] = {}
    while True:
        for pod, fetch in list(fetchers.items()):
            value: int | None = None
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, OSError):
                value = active_from_stats(await fetch())
            if pod not in last or last[pod] != value:
                sink.emit("envoy", "active_requests", pod=pod, value=value)
                last[pod] = value
        await asyncio.sleep(interval_s)


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
