"""A stand-in for Istio's pilot-agent: runs Envoy and owns its termination.

What it models (docs/design.md; istio pkg/envoy/agent.go): Envoy itself exits at once on
SIGTERM, so pilot-agent traps SIGTERM, calls Envoy's `POST /drain_listeners?graceful`,
then waits `terminationDrainDuration` and kills Envoy. With
EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true it waits MINIMUM_DRAIN_DURATION instead and then
polls the listeners' downstream_cx_active every second, exiting at zero. It also serves
the status port's /healthz/ready from Envoy's /ready, as pilot-agent does on 15021.

Readiness after SIGTERM: pilot-agent cancels its context on SIGTERM
(pilot/cmd/pilot-agent/app/cmd.go: `cmd.WaitSignalFunc(cancel)`), and the status server
runs on that context (status/server.go `Run`: `<-ctx.Done()`, then its listener closes).
The gateway's 15021 is an Envoy listener that routes /healthz/ready to that server, so
from SIGTERM on it answers 503 while Envoy's own listeners are still draining. A check
on 15021 (the istio-native mode's HAProxy) therefore fails at once, like the seed's
current mode's check.

What it leaves out: xDS, certificates, iptables; the Envoy config is a static bootstrap
generated from the rendered Gateway and VirtualService (envoy_bootstrap.py).

    python -m runbook.localcluster.pilot_agent --config envoy.json --admin http://IP:15000 \
        --status IP:15021 --drain-time-s 20 --termination-drain-s 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from applog import get_logger

from .envoy_bootstrap import envoy_args


async def active_connections(session: aiohttp.ClientSession, admin: str) -> int | None:
    """Sum of listener downstream_cx_active, skipping per-worker and admin listeners."""
    params = {"format": "json", "filter": "^listener\\..*downstream_cx_active$"}
    try:
        async with session.get(f"{admin}/stats", params=params) as r:
            doc = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return sum(
        int(s["value"])
        for s in doc.get("stats", [])
        if ".worker_" not in s["name"] and "admin" not in s["name"]
    )


async def run(args: argparse.Namespace) -> int:
    log = get_logger("pilot-agent")
    envoy = await asyncio.create_subprocess_exec(
        args.envoy, *envoy_args(args.config, args.drain_time_s), stdout=None, stderr=None
    )
    log.info("envoy_started", extra={"pid": envoy.pid})
    terminated = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    loop.add_signal_handler(signal.SIGINT, terminated.set)

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))

    async def ready(_: web.Request) -> web.Response:
        if terminated.is_set():
            return web.Response(status=503, text="pilot-agent terminating: status server stopped")
        try:
            async with session.get(f"{args.admin}/ready") as r:
                body = await r.text()
                return web.Response(status=r.status, text=body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=503, text=f"envoy admin unreachable: {exc}")

    app = web.Application()
    app.router.add_get("/healthz/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = args.status.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()

    envoy_exit = asyncio.create_task(envoy.wait())
    term_wait = asyncio.create_task(terminated.wait())
    await asyncio.wait({envoy_exit, term_wait}, return_when=asyncio.FIRST_COMPLETED)
    if envoy_exit.done():
        log.error("envoy_exited", extra={"code": envoy.returncode})
        await session.close()
        await runner.cleanup()
        return envoy.returncode or 1

    started = time.monotonic()
    try:
        async with session.post(f"{args.admin}/drain_listeners", params={"graceful": ""}) as r:
            log.info("drain_listeners", extra={"status": r.status})
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("drain_listeners_failed", extra={"error": str(exc)})

    if args.exit_on_zero:
        await asyncio.sleep(args.minimum_drain_s)
        while time.monotonic() - started < args.termination_drain_s:
            active = await active_connections(session, args.admin)
            log.info("active_connections", extra={"active": active})
            if active == 0:
                break
            await asyncio.sleep(1)
    else:
        remaining = args.termination_drain_s - (time.monotonic() - started)
        await asyncio.wait({envoy_exit}, timeout=max(remaining, 0))
    if envoy.returncode is None:
        log.info("killing_envoy", extra={"after_s": round(time.monotonic() - started, 2)})
        envoy.kill()
    await envoy.wait()
    await session.close()
    await runner.cleanup()
    log.info("exit", extra={"envoy_code": envoy.returncode})
    return 0


def command(
    config: Path, admin: str, status: str, drain_time_s: int, termination_drain_s: float
) -> list[str]:
    """This stand-in's command line, as the lab's kubelet starts it for an istio-proxy
    container: the flags main() parses."""
    return [
        sys.executable,
        "-m",
        __spec__.name if __spec__ else "runbook.localcluster.pilot_agent",
        f"--config={config}",
        f"--admin={admin}",
        f"--status={status}",
        f"--drain-time-s={drain_time_s}",
        f"--termination-drain-s={termination_drain_s}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="pilot-agent stand-in: Envoy plus its drain")
    parser.add_argument("--config", required=True)
    parser.add_argument("--admin", required=True, help="Envoy admin base URL")
    parser.add_argument("--status", required=True, help="HOST:PORT for /healthz/ready")
    parser.add_argument("--drain-time-s", type=int, required=True)
    parser.add_argument("--termination-drain-s", type=float, required=True)
    parser.add_argument("--envoy", default=os.path.join(os.path.dirname(sys.executable), "envoy"))
    parser.add_argument(
        "--exit-on-zero",
        action="store_true",
        default=os.environ.get("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "").lower() == "true",
    )
    parser.add_argument(
        "--minimum-drain-s",
        type=float,
        default=float(os.environ.get("MINIMUM_DRAIN_DURATION", "5s").rstrip("s")),
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
