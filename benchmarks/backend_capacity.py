"""Backend capacity: concurrent in-flight /sleep held, memory per request, 10k short requests.

    .venv/bin/python benchmarks/backend_capacity.py [--inflight 10000] [--sleep 20]

Starts `python -m backend` on a loopback port, opens --inflight concurrent
/sleep?seconds=--sleep requests with the aiohttp client (one connection each), and
reports: the most connections the backend held at once (its socket descriptors), its
RSS before and at the peak, the memory per in-flight request, how many of them ended
200, and the wall time to answer 10,000 /sleep?seconds=0 over 100 keep-alive
connections. Prints one JSON object; record it in benchmarks/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from common import free_port, raise_fd_limit, wait_ready


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sockets_held(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


async def hold_inflight(url: str, pid: int, n: int, seconds: int) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=seconds + 120)
    rss_before = rss_kib(pid)
    base_sockets = sockets_held(pid)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> int:
            async with session.get(f"{url}/sleep?seconds={seconds}") as resp:
                await resp.read()
                return resp.status

        started = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        peak_held, peak_rss = 0, rss_before
        while time.monotonic() - started < seconds - 1:
            await asyncio.sleep(0.5)
            peak_held = max(peak_held, sockets_held(pid) - base_sockets)
            peak_rss = max(peak_rss, rss_kib(pid))
            print(f"  held {peak_held}/{n}, rss {peak_rss / 1024:.1f} MiB", file=sys.stderr)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for r in results if r == 200)
    return {
        "inflight_requested": n,
        "inflight_held_peak": peak_held,
        "inflight_ok": ok,
        "inflight_failed": n - ok,
        "rss_idle_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(peak_rss / 1024, 1),
        "kib_per_inflight_request": round((peak_rss - rss_before) / max(peak_held, 1), 2),
    }


async def short_requests(url: str, n: int, concurrency: int) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> int:
            async with sem, session.get(f"{url}/sleep?seconds=0") as resp:
                await resp.read()
                return resp.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(one() for _ in range(n)))
        took = time.monotonic() - started
    return {
        "short_requests": n,
        "short_ok": statuses.count(200),
        "short_seconds": round(took, 2),
        "short_per_second": round(n / took),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflight", type=int, default=10_000)
    parser.add_argument("--sleep", type=int, default=20)
    parser.add_argument("--short", type=int, default=10_000)
    args = parser.parse_args()
    raise_fd_limit()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "BIND_HOST": "127.0.0.1", "SHUTDOWN_TIMEOUT": "5"}
    backend = subprocess.Popen(
        [sys.executable, "-m", "backend"], env=env, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(url))
        report = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            **asyncio.run(hold_inflight(url, backend.pid, args.inflight, args.sleep)),
            **asyncio.run(short_requests(url, args.short, 100)),
        }
    finally:
        backend.terminate()
        backend.wait(30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
