"""What the benchmark scripts share: a free loopback port, waiting for a server, the
descriptor limit, and wrk's figure."""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import subprocess

import aiohttp

WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
WRK_ERRORS = re.compile(r"Socket errors: (.*)|Non-2xx or 3xx responses: (\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """Thousands of held connections need more than the usual 1,024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def wait_ready(url: str, path: str = "/") -> None:
    """Until `url + path` answers 200 (10 s at most)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url + path) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def wrk(url: str, seconds: int, warmup_s: int = 0) -> tuple[float, str]:
    """wrk's requests per second (one thread, 50 keep-alive connections) and its error
    lines (empty when none), after an optional warm-up run."""
    if warmup_s:
        subprocess.run(
            ["wrk", "-t1", "-c50", f"-d{warmup_s}s", url], capture_output=True, check=True
        )
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    rate = WRK_RATE.search(out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(rate.group(1)), "; ".join(m.group(0) for m in WRK_ERRORS.finditer(out))
