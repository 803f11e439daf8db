"""runbook.collectors.envoy: the gateway's in-flight gauge from Envoy's JSON stats, and
from a real Envoy."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp

from helpers import Procs, http
from runbook.collectors import envoy


def test_active_from_stats_sums_and_unknown_is_none() -> None:
    stats = {"stats": [{"name": "a", "value": 2}, {"name": "b", "value": 1}]}
    assert envoy.active_from_stats(stats) == 3
    assert envoy.active_from_stats({"stats": []}) is None
    assert envoy.active_from_stats({}) is None


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
