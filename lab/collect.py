"""Collectors feeding events.jsonl while a run is under way.

- HAProxy server state from the runtime API (`show stat`) polled at 10 Hz: its own
  clock has 1 s resolution (FINDINGS), so we poll and stamp changes ourselves;
- HAProxy's `option log-health-checks` lines, received as syslog over UDP;
- each gateway Envoy's data-plane active-request gauge, polled at 5 Hz.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp

from .events import EventLog
from .haproxy_poll import parse_show_stat


async def runtime_api(socket_path: str, command: str) -> str:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(command.encode() + b"\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.decode()


async def poll_haproxy(
    events: EventLog, socket_path: str, backend: str = "igw_nodeports", interval_s: float = 0.1
) -> None:
    last: dict[str, str] = {}
    while True:
        try:
            state = parse_show_stat(await runtime_api(socket_path, "show stat"), backend)
        except OSError as exc:
            events.emit("haproxy", "runtime_api_error", error=str(exc))
            await asyncio.sleep(1)
            continue
        for server, status in state.items():
            if last.get(server) != status:
                events.emit(
                    "haproxy",
                    "server_state",
                    server=server,
                    status=status,
                    previous=last.get(server),
                )
        last = state
        await asyncio.sleep(interval_s)


_HEALTH = re.compile(r"(Health check for (?:backup )?server \S+ .*)$")


class _Syslog(asyncio.DatagramProtocol):
    def __init__(self, events: EventLog) -> None:
        self.events = events

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace").strip()
        match = _HEALTH.search(text)
        if match:
            self.events.emit("haproxy", "health_check_log", line=match.group(1))
        elif "is DOWN" in text or "is UP" in text or "NOLB" in text:
            self.events.emit("haproxy", "server_log", line=text[text.find("Server") :])


async def syslog_receiver(events: EventLog, host: str, port: int) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Syslog(events), local_addr=(host, port)
    )
    return transport


async def poll_envoy_gauges(
    events: EventLog, admins: dict[str, str], stat_regex: str, interval_s: float = 0.2
) -> None:
    """admins: pod name -> Envoy admin base URL."""
    last: dict[str, int | None] = {}
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            for pod, admin in admins.items():
                value: int | None = None
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(f"{admin}/stats", params={"filter": stat_regex}) as r:
                        text = await r.text()
                    values = [
                        int(line.rsplit(": ", 1)[1]) for line in text.splitlines() if ": " in line
                    ]
                    value = sum(values) if values else None
                if last.get(pod, -1) != value:
                    events.emit("envoy", "active_requests", pod=pod, value=value)
                    last[pod] = value
            await asyncio.sleep(interval_s)
