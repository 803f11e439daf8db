"""hc under HAProxy-like probing: latency of /health_check.html at a fixed rate while
many idle connections are held open.

    .venv/bin/python benchmarks/hc_probe_latency.py [--rate 1000] [--seconds 10] [--idle 1000]

Starts `python -m hc` on a loopback port, opens --idle connections that send nothing
(kept open for the whole run, as idle keep-alive clients would be), then sends
/health_check.html at --rate per second, open loop (a probe is sent on schedule
whether or not the previous ones were answered, as HAProxy's checks are), each on a
new connection as HAProxy's `option httpchk` does, and records each probe's latency
from the connect to the whole answer. Its latency is measured from when it was due,
so a client that falls behind shows it rather than hiding it. Prints one JSON object
with p50/p99/max; record it in benchmarks/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, raise_fd_limit

REQUEST = b"GET /health_check.html HTTP/1.1\r\nHost: hc\r\nConnection: close\r\n\r\n"


async def wait_listening(host: str, port: int) -> None:
    for _ in range(100):
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("hc did not start")


async def probe(host: str, port: int, due: float) -> tuple[float, bool]:
    """(seconds from due to the whole answer, answered 200 OK)"""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        answer = await reader.read()
        writer.close()
    except OSError:
        return time.perf_counter() - due, False
    return time.perf_counter() - due, answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"OK")


async def run(host: str, port: int, rate: int, seconds: int, idle: int) -> dict[str, object]:
    await wait_listening(host, port)
    held = [await asyncio.open_connection(host, port) for _ in range(idle)]
    interval = 1 / rate
    tasks = []
    start = time.perf_counter() + 0.5
    for i in range(rate * seconds):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(probe(host, port, due)))
    results = await asyncio.gather(*tasks)
    still_open = sum(1 for r, _ in held if not r.at_eof())
    for _, w in held:
        w.close()
    lat = sorted(r[0] * 1000 for r in results)
    return {
        "probes": len(results),
        "failed": sum(1 for r in results if not r[1]),
        "idle_held": idle,
        "idle_still_open": still_open,
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3),
        "max_ms": round(lat[-1], 3),
        "achieved_per_s": round(len(results) / (time.perf_counter() - start), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    raise_fd_limit()
    port = free_port()
    hc = subprocess.Popen(
        [sys.executable, "-m", "hc"],
        env={**os.environ, "HC_ADDR": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
    )
    try:
        # the client on uvloop too: its own scheduling delay is part of what it measures
        report = uvloop.run(run("127.0.0.1", port, args.rate, args.seconds, args.idle))
    finally:
        hc.terminate()
        hc.wait(30)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rate": args.rate,
        **report,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
