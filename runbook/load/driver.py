"""The load driver: requests of every class through the LB, one JSON line per request.

The scenarios (runbook.model.plan.LoadShape): `inflight` is the seed's S1, K long requests
(`/sleep` and `/stream`) in flight when the termination begins plus short requests at a
fixed rate; `steady` keeps every class starting throughout: short requests over fresh
and over pooled keep-alive connections, /sleep, /stream and WebSocket sessions (`/ws`,
a message sent and its echo awaited every interval). Each request is recorded with its
start, first byte and end (wall clock, ms), their offsets from the termination, the
status, bytes and chunks (stream lines, WebSocket echoes) received, and an error kind:
refused, reset, timeout, truncated, 5xx (or 4xx, other).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx

from ..artifacts.events import EventLog, now_ms
from ..artifacts.writes import WriteFailures
from ..model import registry
from ..model.plan import LoadShape
from ..model.registry import REQUEST_ID_HEADER
from . import grpcclient, h2client, vegeta
from .records import RequestRecord, status_kind, worth_a_retry
from .tls import client_tls

#: What a class's requests go out on: an aiohttp session, h2_short's HTTP/2 client or
#: grpc_stream's channel.
Session = aiohttp.ClientSession | httpx.AsyncClient | grpc.aio.Channel


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
    return status_kind(status) or ("truncated" if truncated else None)


#: How long the pooled class keeps an idle connection: well under HAProxy's keep-alive
#: timeout (its `timeout client`, at least the route timeout), so the client never
#: sends on a connection HAProxy is closing; that race is the client's, not the order's.
POOL_KEEPALIVE_S = 4.0


def new_session(ca_file: str | None, timeout_s: float, pool_size: int = 0) -> aiohttp.ClientSession:
    """`pool_size` 0: a new connection per request. Otherwise a keep-alive pool of that
    many connections, reused the way browsers and SDKs reuse theirs."""
    ctx = client_tls(ca_file)
    if pool_size:
        connector = aiohttp.TCPConnector(
            ssl=ctx, limit=pool_size, keepalive_timeout=POOL_KEEPALIVE_S
        )
    else:
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
    """requests.raw.jsonl, line by line, flushed; never overwritten. A failed write goes
    to `failures` (the run stops, runbook.artifacts.writes); the file takes no more."""

    def __init__(self, path: Path, failures: WriteFailures | None = None) -> None:
        # the collectors' JSON-lines file: one line a record, its failures the same
        self._log = EventLog(path, failures)
        self.termination_ms: float | None = None
        self.records: list[RequestRecord] = []

    def write(self, record: RequestRecord) -> None:
        self.records.append(record)
        self._log.write(record.as_dict(self.termination_ms))

    def close(self) -> None:
        self._log.close()


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
    return finish(record, exc, truncated)


def finish(record: RequestRecord, exc: BaseException | None, truncated: bool) -> RequestRecord:
    """Stamp the end and the error kind (and the exception, when there was one)."""
    if exc is not None:
        record.detail = f"{type(exc).__name__}: {exc}"[:300]
    record.end_ms = now_ms()
    record.error = classify(exc, record.status, truncated)
    return record


async def websocket(
    session: aiohttp.ClientSession, base_url: str, record: RequestRecord, interval_ms: int
) -> RequestRecord:
    """A WebSocket session: send a message every interval and await its echo, then
    close normally. Every echo missing or out of order is a truncated session."""
    exc: BaseException | None = None
    truncated = False
    url = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    headers = {REQUEST_ID_HEADER: record.request_id, "X-Request-Id": record.request_id}
    expected = record.expected_chunks or 1
    try:
        async with session.ws_connect(url + record.path, headers=headers, autoping=True) as ws:
            record.status = 101
            for i in range(expected):
                if i:
                    await asyncio.sleep(interval_ms / 1000)
                await ws.send_str(str(i))
                msg = await ws.receive(timeout=max(2.0, 4 * interval_ms / 1000))
                if msg.type is not aiohttp.WSMsgType.TEXT or msg.data != str(i):
                    truncated = True
                    record.detail = f"message {i}: got {msg.type.name} {str(msg.data)[:80]!r}"
                    break
                if record.first_byte_ms is None:
                    record.first_byte_ms = now_ms()
                record.chunks += 1
                record.bytes += len(msg.data)
            else:
                await ws.close()
    except aiohttp.WSServerHandshakeError as e:
        record.status = e.status
        record.detail = f"handshake: {e.status} {e.message}"[:300]
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        exc = e
    return finish(record, exc, truncated)


def long_starts(s: LoadShape) -> dict[str, float]:
    """steady: when each long class's first group starts (s after the load). HAProxy's
    round robin splits a group only if nothing comes between its requests, so each
    class's groups fall midway between two short requests' starts and apart from the
    other classes' (a third of the interval on)."""
    # vegeta's pooled requests come too close together to fall between: the short
    # class's gap then, and the groups split as the round robin takes them
    pooled = s.pooled_rate_per_s if s.pooled_tool == "aiohttp" else 0.0
    # h2_short's rate is a multiple of the short class's: its starts fall on theirs
    gap = 1 / max(s.short_rate_per_s, pooled, s.h2_rate_per_s)
    interval = s.long_together / s.long_rate_per_s
    driven = registry.scenario(s.scenario).classes
    classes = [c for c in registry.LONG_CLASSES if c in driven]
    return {
        c: gap / 2 + round(i * interval / len(classes) / gap) * gap for i, c in enumerate(classes)
    }


class LoadDriver:
    def __init__(
        self,
        base_url: str,
        ca_file: str | None,
        recorder: Recorder,
        scenario: LoadShape,
        vegeta_binary: Path | None = None,
    ) -> None:
        if scenario.pooled_tool == "vegeta" and vegeta_binary is None:
            raise ValueError(f"scenario {scenario.scenario!r} needs vegeta: no binary given")
        grpcclient.require_trust(scenario.scenario, ca_file)
        self.base_url = base_url
        self.ca_file = ca_file
        self.recorder = recorder
        self.scenario = scenario
        self.vegeta_binary = vegeta_binary
        self._ids = itertools.count(1)
        # unique across runs and drivers: a run's ids never match another run's lines
        self._id_prefix = secrets.token_hex(4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def _next_id(self) -> tuple[int, str]:
        n = next(self._ids)
        return n, f"{self._id_prefix}-{n:06d}"

    async def _run_one(self, session: Session, cls: str) -> None:
        s = self.scenario
        n, request_id = self._next_id()
        path, expected = s.request(cls)
        record = RequestRecord(
            n,
            request_id,
            cls,
            path,
            now_ms(),
            expected_chunks=expected,
            planned_s=s.planned_s(cls),
        )
        if cls == "ws":
            assert isinstance(session, aiohttp.ClientSession)
            done = await websocket(session, self.base_url, record, s.ws_interval_ms)
        else:
            done = await self._send(session, record)
            if s.client_retry == "once" and worth_a_retry(done):
                done = await self._again(session, done)
        self.recorder.write(done)

    async def _send(self, session: Session, record: RequestRecord) -> RequestRecord:
        if isinstance(session, grpc.aio.Channel):
            s = self.scenario
            return await grpcclient.ticks(
                session, record, s.stream_interval_ms, timeout_s=s.long_timeout_s
            )
        if isinstance(session, httpx.AsyncClient):
            return await h2client.fetch(session, self.base_url, record)
        return await fetch(session, self.base_url, record, record.cls == "stream")

    async def _again(self, session: Session, first: RequestRecord) -> RequestRecord:
        """The request sent once more, under its own id (`<id>.2`: each attempt's hops
        are its own); one record, started when the first attempt was."""
        second = RequestRecord(
            first.id,
            f"{first.request_id}.2",
            first.cls,
            first.path,
            now_ms(),
            expected_chunks=first.expected_chunks,
            planned_s=first.planned_s,
        )
        done = await self._send(session, second)
        done.first_attempt = first.attempt()
        done.start_ms = first.start_ms
        return done

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _at_rate(
        self,
        session: Session,
        cls: str,
        rate: float,
        together: int = 1,
        after_s: float = 0.0,
    ) -> None:
        """Start `together` requests of `cls` back to back every together/rate s (each its
        own task) until stopped: `rate` a second on average, the first after `after_s`."""
        interval = together / rate
        next_at = time.monotonic() + after_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), after_s)
        while not self._stop.is_set():
            for _ in range(together):
                self._spawn(self._run_one(session, cls))
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0, next_at - time.monotonic()))

    async def _with_vegeta(self, cls: str, rate: float, pool_size: int) -> None:
        """`cls` at `rate` a second over `pool_size` keep-alive connections, by vegeta."""
        assert self.vegeta_binary is not None
        spec = vegeta.VegetaClass(
            self.vegeta_binary,
            self.base_url,
            self.scenario.request(cls)[0],
            rate,
            pool_size,
            timeout_s=10,
        )
        await vegeta.attack(spec, cls, lambda: self._next_id()[1], self._stop, self.recorder.write)

    async def _burst(self, session: aiohttp.ClientSession, after_s: float) -> None:
        """inflight: the long requests, all at once, `after_s` after the load starts."""
        s = self.scenario
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), after_s)
        if self._stop.is_set():
            return
        # interleaved with the round-robin LB: each gateway gets some of each class
        for _ in range(s.sleep_count):
            self._spawn(self._run_one(session, "sleep"))
        for _ in range(s.stream_count):
            self._spawn(self._run_one(session, "stream"))

    async def run(self) -> None:
        """The scenario's load until `stop()`, then every request to its end."""
        s = self.scenario
        known = registry.scenario(s.scenario)
        async with contextlib.AsyncExitStack() as stack:
            fresh = await stack.enter_async_context(new_session(self.ca_file, 10))
            pooled = await stack.enter_async_context(
                new_session(self.ca_file, 10, pool_size=s.pool_size)
            )
            longs = await stack.enter_async_context(new_session(self.ca_file, s.long_timeout_s))
            h2 = await stack.enter_async_context(
                h2client.new_client(self.ca_file, 10, POOL_KEEPALIVE_S)
            )
            sessions: dict[str, Session] = {c: longs for c in registry.LONG_CLASSES}
            if "grpc_stream" in known.classes:
                sessions["grpc_stream"] = await stack.enter_async_context(
                    await grpcclient.new_channel(self.base_url, self.ca_file)
                )
            loops = [self._at_rate(fresh, "short", s.short_rate_per_s)]
            if known.continuous:
                if s.pooled_tool == "vegeta":
                    loops.append(
                        self._with_vegeta("short_pooled", s.pooled_rate_per_s, s.pool_size)
                    )
                else:
                    loops.append(self._at_rate(pooled, "short_pooled", s.pooled_rate_per_s))
                if s.h2_rate_per_s:
                    loops.append(self._at_rate(h2, "h2_short", s.h2_rate_per_s))
                loops += [
                    self._at_rate(sessions[c], c, s.long_rate_per_s, s.long_together, after)
                    for c, after in long_starts(s).items()
                ]
            else:
                loops.append(self._burst(longs, s.warmup_s))
            await asyncio.gather(*loops)
            await self.drain()

    def stop(self) -> None:
        """Start nothing new; what is in flight runs to its end."""
        self._stop.set()

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
