"""runbook.collectors.envoy: the gateway's in-flight gauge from Envoy's JSON stats, and
from a real Envoy."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import aiohttp

from helpers import Procs, http
from runbook.collectors import envoy
from runbook.model import registry


def test_active_from_stats_sums_and_unknown_is_none() -> None:
    stats = {"stats": [{"name": "a", "value": 2}, {"name": "b", "value": 1}]}
    assert envoy.active_from_stats(stats) == 3
    assert envoy.active_from_stats({"stats": []}) is None
    assert envoy.active_from_stats({}) is None


def test_the_gauge_s_regex_takes_istio_1_30_s_name_and_the_older_one() -> None:
    """Istio 1.30's istiod (onebox) names the connection manager `outbound_0.0.0.0_8080;`:
    a regex for the name without the `;` read nothing there, and every drain ran to its
    deadline. The admin's own gauge and the overflow counter stay out."""
    regex = envoy.active_stat_regex(8080)
    assert re.fullmatch(regex, "http.outbound_0.0.0.0_8080;.downstream_rq_active")
    assert re.fullmatch(regex, "http.outbound_0.0.0.0_8080.downstream_rq_active")
    for other in (
        "http.admin.downstream_rq_active",
        "http.outbound_0.0.0.0_8081;.downstream_rq_active",
        "cluster.xds-grpc;.upstream_rq_active",
        "http.outbound_0.0.0.0_8080;.downstream_rq_active_overflow",
    ):
        assert not re.fullmatch(regex, other), other
    # the local lab's static Envoy names it as istiod does
    assert re.fullmatch(regex, f"http.{registry.gateway_stat_prefix(8080)}.downstream_rq_active")


def test_the_gauge_of_a_real_envoy_sees_one_then_zero(procs: Procs) -> None:
    backend = procs.backend()
    proxy = procs.envoy(backend)
    regex = envoy.active_stat_regex(proxy.port)

    async def read() -> int | None:
        async with aiohttp.ClientSession() as session:
            fetch = envoy.http_fetcher(session, str(proxy.extra["admin"]), regex)
            return envoy.active_from_stats(await fetch())

    assert asyncio.run(read()) == 0
    slow = threading.Thread(target=http, args=("GET", f"{proxy.url}/sleep?seconds=2"))
    slow.start()
    time.sleep(0.7)
    assert asyncio.run(read()) == 1
    slow.join()
    assert asyncio.run(read()) == 0
