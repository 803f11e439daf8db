"""The load driver: long and short requests through the LB, one JSON line per request.

The `inflight` scenario (lab.model.plan) is the seed's S1: K long requests (`/sleep` and
`/stream`) in flight when the termination begins, plus short requests at a fixed rate
before, during and after it. Each request is recorded with its start, first byte and end (wall
clock, ms), their offsets from the termination, the status, bytes and chunks received,
and an error kind: refused, reset, timeout, truncated, 5xx (or 4xx, other).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import secrets
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from ..artifacts.events import now_ms
from ..model.plan import InflightScenario
from ..model.registry import REQUEST_ID_HEADER

ERROR_KINDS = ("refused", "reset", "timeout", "truncated", "5xx", "4xx", "other")


@dataclass(slots=True)
class RequestRecord:
    id: int
    request_id: str  # sent with the request; every hop logs it (registry.REQUEST_ID_HEADER)
    cls: str
    path: str
    start_ms: float
    first_byte_ms: float | None = None
    end_ms: float | None = None
    status: int | None = None
    bytes: int = 0
    chunks: int = 0
    expected_chunks: int | None = None
    error: str | None = None
    detail: str | None = None

    def as_dict(self, termination_ms: float | None) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("cls")
        for key in ("start", "first_byte", "end"):
            value = d[f"{key}_ms"]
            d[f"{key}_offset_ms"] = (
                None
                if value is None or termination_ms is None
                else round(value - termination_ms, 1)
            )
        return d


def classify(exc: BaseException | None, status: int | None, truncated: bool) -> str | None:
    """The error kind of one request, or None for a 2xx/3xx that arrived whole."""
    if exc is not None:
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return "timeout"
        if isinstance(exc, aiohttp.ClientConnectorError):
            os_error = exc.os_error
            if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
                return "refused"
            if os_error.errno == errno.ECONNRESET:
                return "reset"
            return "other"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return "truncated"
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
            # before a status line: the connection was reset or closed under us
            return "truncated" if status is not None else "reset"
        if isinstance(exc, ConnectionResetError):
            return "reset"
        return "other"
    if status is None:
        return "other"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "truncated" if truncated else None


def new_session(ca_file: str | None, timeout_s: float) -> aiohttp.ClientSession:
    ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else False
    if isinstance(ctx, ssl.SSLContext):
        ctx.check_hostname = False  # the lab's certificate names the homelab host
    # A new connection per request: no pooled connection outlives the LB's view of a server.
    connector = aiohttp.TCPConnector(ssl=ctx, limit=0, force_close=True)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )
    # aiohttp re-sends an idempotent request once when the connection drops
    # (client.py, RFC 9112 §9.3.1), so a reset would be recorded as a success or as
    # something else. There is no public switch; aiohttp's own TestClient does this.
    session._retry_connection = False
    return session


class Recorder:
    """requests.jsonl, line by line, flushed; never overwritten."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("x", encoding="utf-8", buffering=1)
        self.termination_ms: float | None = None
        self.records: list[RequestRecord] = []

    def write(self, record: RequestRecord) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record.as_dict(self.termination_ms)) + "\n")

    def close(self) -> None:
        self._file.close()


async def fetch(
    session: aiohttp.ClientSession, base_url: str, record: RequestRecord, stream: bool
) -> RequestRecord:
    exc: BaseException | None = None
    truncated = False
    try:
        headers = {REQUEST_ID_HEADER: record.request_id, "X-Request-Id": record.request_id}
        async with session.get(base_url + record.path, headers=headers) as resp:
            record.status = resp.status
            async for chunk in resp.content.iter_any():
                if record.first_byte_ms is None:
                    record.first_byte_ms = now_ms()
                record.bytes += len(chunk)
                if stream:
                    record.chunks += chunk.count(b"\n")
            if record.first_byte_ms is None:
                record.first_byte_ms = now_ms()
        if stream and resp.status == 200 and record.expected_chunks is not None:
            truncated = record.chunks < record.expected_chunks
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        exc = e
        record.detail = f"{type(e).__name__}: {e}"[:300]
    record.end_ms = now_ms()
    record.error = classify(exc, record.status, truncated)
    return record


class LoadDriver:
    def __init__(
        self, base_url: str, ca_file: str | None, recorder: Recorder, scenario: InflightScenario
    ) -> None:
        self.base_url = base_url
        self.ca_file = ca_file
        self.recorder = recorder
        self.scenario = scenario
        self._ids = itertools.count(1)
        # unique across runs and drivers: a run's ids never match another run's lines
        self._id_prefix = secrets.token_hex(4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._shorts_stop = asyncio.Event()

    async def _run_one(
        self,
        session: aiohttp.ClientSession,
        cls: str,
        path: str,
        expected_chunks: int | None = None,
    ) -> None:
        n = next(self._ids)
        record = RequestRecord(
            n, f"{self._id_prefix}-{n:06d}", cls, path, now_ms(), expected_chunks=expected_chunks
        )
        self.recorder.write(await fetch(session, self.base_url, record, cls == "stream"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shorts(self) -> None:
        """Short requests at a fixed rate until stopped (each its own task)."""
        async with new_session(self.ca_file, 10) as session:
            interval = 1 / self.scenario.short_rate_per_s
            next_at = time.monotonic()
            while not self._shorts_stop.is_set():
                self._spawn(self._run_one(session, "short", "/"))
                next_at += interval
                await asyncio.sleep(max(0, next_at - time.monotonic()))
            await self.drain()

    async def longs(self) -> None:
        s = self.scenario
        async with new_session(self.ca_file, s.long_s + 60) as session:
            jobs = [
                self._run_one(session, "sleep", f"/sleep?seconds={s.long_s}")
                for _ in range(s.sleep_count)
            ]
            jobs += [
                self._run_one(
                    session,
                    "stream",
                    f"/stream?chunks={s.stream_chunks}&interval_ms={s.stream_interval_ms}",
                    expected_chunks=s.stream_chunks,
                )
                for _ in range(s.stream_count)
            ]
            # interleaved with the round-robin LB: each gateway gets some of each class
            await asyncio.gather(*jobs)

    def stop_shorts(self) -> None:
        self._shorts_stop.set()

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
