"""The load driver's error classification, against real misbehaving servers."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from helpers import free_port
from runbook.load.driver import (
    LoadDriver,
    Recorder,
    classify,
    fetch,
    long_starts,
    new_session,
)
from runbook.load.records import RequestRecord
from runbook.model.plan import LoadShape, plan

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(handler: Handler, run: Callable[[str], Awaitable[object]]) -> object:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await run(f"http://127.0.0.1:{port}")
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def rst(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


async def one(
    url: str, path: str = "/", stream: bool = False, timeout: float = 5, expected: int | None = None
) -> RequestRecord:
    async with new_session(None, timeout) as session:
        record = RequestRecord(
            1, "t-000001", "stream" if stream else "sleep", path, 0.0, expected_chunks=expected
        )
        return await fetch(session, url, record, stream)


def test_refused() -> None:
    record = asyncio.run(one(f"http://127.0.0.1:{free_port()}"))
    assert record.error == "refused" and record.status is None


def test_reset_before_the_status_line() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        rst(writer)

    record = asyncio.run(with_server(handler, one))
    assert record.error == "reset" and record.status is None


def test_timeout() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    record = asyncio.run(with_server(handler, lambda url: one(url, timeout=0.5)))
    assert record.error == "timeout"


def test_truncated_body() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        rst(writer)

    record = asyncio.run(with_server(handler, one))
    assert record.status == 200 and record.error == "truncated"


def test_stream_with_missing_chunks_is_truncated() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        body = b"chunk 0 @ 0ms\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    record = asyncio.run(with_server(handler, lambda url: one(url, stream=True, expected=3)))
    assert record.chunks == 1 and record.error == "truncated"


def test_5xx() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    record = asyncio.run(with_server(handler, one))
    assert (record.status, record.error) == (503, "5xx")


def test_success_records_first_byte_and_bytes() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    record = asyncio.run(with_server(handler, one))
    assert record.error is None and record.bytes == 5 and record.first_byte_ms is not None
    assert record.end_ms is not None and record.end_ms >= record.first_byte_ms


def _count_attempts(session_factory: Callable[[], aiohttp.ClientSession]) -> tuple[int, str | None]:
    attempts = 0

    async def handler(reader, writer) -> None:
        nonlocal attempts
        attempts += 1
        await read_request(reader)
        writer.close()  # closes without an answer, every time

    async def run(url: str) -> str | None:
        async with session_factory() as session:
            record = RequestRecord(1, "t-000001", "short", "/", 0.0)
            return (await fetch(session, url, record, False)).error

    error = asyncio.run(with_server(handler, run))
    return attempts, error  # type: ignore[return-value]


def test_no_silent_retry_of_idempotent_requests() -> None:
    # aiohttp on its own re-sends the GET once: the failure would hide
    default_attempts, _ = _count_attempts(
        lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    )
    assert default_attempts == 2
    ours, error = _count_attempts(lambda: new_session(None, 5))
    assert ours == 1 and error == "reset"


@pytest.mark.parametrize(
    ("exc", "status", "truncated", "kind"),
    [
        (None, 200, False, None),
        (None, 404, False, "4xx"),
        (None, 502, False, "5xx"),
        (None, 200, True, "truncated"),
        (aiohttp.ServerDisconnectedError(), None, False, "reset"),
        (aiohttp.ServerDisconnectedError(), 200, False, "truncated"),
        (TimeoutError(), None, False, "timeout"),
    ],
)
def test_classify_table(exc, status, truncated, kind) -> None:
    assert classify(exc, status, truncated) == kind


def test_steady_starts_each_long_class_in_back_to_back_pairs(tmp_path) -> None:
    """HAProxy's round robin gives the two of a pair to different gateways only if no
    other request comes between them: the driver starts a class's pair together, midway
    between two short requests and apart from the other classes' pairs (a CI run once had
    every WebSocket in flight on the survivor, another every /sleep)."""
    arrivals: list[tuple[float, str]] = []

    async def note(request: web.Request) -> web.StreamResponse:
        arrivals.append((asyncio.get_running_loop().time(), request.path))
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(msg.data)
            return ws
        return web.Response(text="ok\n")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", note)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        # the steady scenario's own shape, its long requests 1 s
        shape = replace(plan("quick", "ordered", "steady").load, long_s=1)
        driver = LoadDriver(f"http://127.0.0.1:{port}", None, Recorder(tmp_path / "r.jsonl"), shape)
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(4.6)
        driver.stop()
        await asyncio.wait_for(task, 20)
        await runner.cleanup()

    asyncio.run(main())
    at = [i for i, (_, p) in enumerate(arrivals) if p != "/"]
    assert len(at) >= 12, arrivals  # two of each of three classes, at least twice
    for i, j in zip(at[0::2], at[1::2], strict=False):
        assert j == i + 1, arrivals[i : j + 1]  # a pair: nothing at all between them
        assert arrivals[i][1] == arrivals[j][1], arrivals[i : j + 1]
    starts = [arrivals[i][0] for i in at[0::2]]
    assert min(b - a for a, b in itertools.pairwise(starts)) > 0.3, starts


def test_long_groups_start_midway_between_short_requests_and_apart() -> None:
    shape = plan("quick", "ordered", "steady").load
    starts = long_starts(shape)
    assert list(starts) == ["sleep", "stream", "ws"]
    gap = 1 / max(shape.short_rate_per_s, shape.pooled_rate_per_s)
    for t in starts.values():  # short requests start at multiples of `gap`
        assert abs(t / gap - round(t / gap)) == pytest.approx(0.5)
    times = sorted(starts.values())
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.5  # a 2 s interval


def _retry_server(first: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> tuple[Handler, list]:
    """A server that treats each request id's first attempt with `first` and answers
    200 to the rest; what it saw, in order: (request id, path)."""
    seen: list[tuple[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        rid = next(
            line.split(": ", 1)[1]
            for line in head.split("\r\n")
            if line.lower().startswith("x-igw-request-id:")
        )
        seen.append((rid, head.split(" ")[1]))
        if not rid.endswith(".2"):
            await first(writer)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    return handler, seen


async def unavailable(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def not_found(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def reset(writer: asyncio.StreamWriter) -> None:
    rst(writer)


@pytest.mark.parametrize(
    ("first", "retry", "attempts", "final", "first_error"),
    [
        (reset, "once", 2, (200, None), "reset"),
        (unavailable, "once", 2, (200, None), "5xx"),
        (not_found, "once", 1, (404, "4xx"), None),  # an answer: not retried
        (reset, "none", 1, (None, "reset"), None),  # the default: every failure shows
    ],
    ids=["reset", "503", "404", "no-retry"],
)
def test_a_client_retry_sends_once_more_and_keeps_both_outcomes(
    tmp_path: Path, first, retry: str, attempts: int, final: tuple, first_error: str | None
) -> None:
    handler, seen = _retry_server(first)

    async def run(url: str) -> list[dict]:
        shape = LoadShape(long_s=1, client_retry=retry)
        recorder = Recorder(tmp_path / "requests.raw.jsonl")
        driver = LoadDriver(url, None, recorder, shape)
        async with new_session(None, 5) as session:
            await driver._run_one(session, "short")
        recorder.close()
        return [json.loads(line) for line in (tmp_path / "requests.raw.jsonl").open()]

    (record,) = asyncio.run(with_server(handler, run))
    assert len(seen) == attempts
    assert (record["status"], record["error"]) == final
    if first_error is None:
        assert record["first_attempt"] is None
        return
    fa = record["first_attempt"]
    assert fa["error"] == first_error and fa["request_id"] == seen[0][0]
    # the second attempt has its own id (its hops are its own), the record starts at
    # the first attempt's start
    assert record["request_id"] == seen[0][0] + ".2" == seen[1][0]
    assert record["start_ms"] == fa["start_ms"] <= fa["end_ms"] <= record["end_ms"]
