"""vegeta as the driver's high-rate class (runbook.load.vegeta): the real binary, built
from its pinned module by `make setup`, against real servers on loopback. Every id sent
reaches the server and comes back as one record; stopping waits for what is in flight;
each failure has the driver's error kind; a cancelled attack leaves no process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import ROOT, free_port
from runbook.load import vegeta
from runbook.load.records import RequestRecord
from runbook.model.registry import REQUEST_ID_HEADER
from runbook.runners import gotools

Respond = Callable[[str, asyncio.StreamWriter], Awaitable[bool]]


@pytest.fixture(scope="module")
def binary() -> Path:
    return gotools.binary("vegeta")


class Server:
    """HTTP/1.1 keep-alive on loopback: each request's id header and query id, kept;
    `respond` answers one (True: the connection stays open)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.seen: list[tuple[str, str]] = []  # (header id, query id)
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                target = head.split(" ", 2)[1]
                headers = dict(
                    line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line
                )
                rid = parse_qs(urlsplit(target).query)[vegeta.RID_PARAM][0]
                self.seen.append((headers.get(REQUEST_ID_HEADER, ""), rid))
                if not await self.respond(rid, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def ok(_: str, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    return True


def spec(binary: Path, url: str, rate: float = 200, timeout_s: float = 5) -> vegeta.VegetaClass:
    return vegeta.VegetaClass(binary, url, "/", rate, connections=4, timeout_s=timeout_s)


async def drive(
    binary: Path, respond: Respond | None, seconds: float, **kw: float
) -> tuple[list[RequestRecord], Server | None, list[str]]:
    """Attack a server answering with `respond` (None: a port nothing listens on) for
    `seconds`, then stop; the records, the server, every id handed out."""
    records: list[RequestRecord] = []
    handed: list[str] = []
    stop = asyncio.Event()

    def next_id() -> str:
        handed.append(f"t-{len(handed) + 1:06d}")
        return handed[-1]

    server = Server(respond) if respond else None
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0) if server else None
    port = listener.sockets[0].getsockname()[1] if listener else free_port()
    try:
        task = asyncio.create_task(
            vegeta.attack(
                spec(binary, f"http://127.0.0.1:{port}", **kw), "t", next_id, stop, records.append
            )
        )
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        if listener:
            listener.close()
    return records, server, handed


def test_every_request_sent_reaches_the_server_with_its_id_and_has_one_record(
    binary: Path,
) -> None:
    records, server, handed = asyncio.run(drive(binary, ok, 1.5))
    assert server is not None and len(records) > 100
    ids = [r.request_id for r in records]
    assert len(set(ids)) == len(ids)
    # both copies of the id arrived, and what was sent is what was recorded
    assert all(header == query for header, query in server.seen)
    assert sorted(ids) == sorted(q for _, q in server.seen)
    assert set(ids) <= set(handed)
    assert all((r.status, r.error, r.cls) == (200, None, "t") for r in records)
    assert all(r.end_ms is not None and r.end_ms >= r.start_ms for r in records)
    assert all(r.id == int(r.request_id.rsplit("-", 1)[1]) for r in records)
    # a keep-alive pool: far fewer connections than requests
    assert server.connections <= 8


def test_stopping_waits_for_the_requests_in_flight(binary: Path) -> None:
    async def slow(_: str, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        return await ok(_, writer)

    records, server, _ = asyncio.run(drive(binary, slow, 0.5, rate=20))
    assert server is not None and server.seen
    # stopped 0.5 s in, while every request sent was still being answered
    assert len(records) == len(server.seen)
    assert all(r.error is None and r.status == 200 for r in records)


def rst(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


async def reset(_: str, writer: asyncio.StreamWriter) -> bool:
    rst(writer)
    return False


async def unavailable(_: str, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    return True


async def truncated(_: str, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    await writer.drain()
    rst(writer)
    return False


async def silent(_: str, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3)
    return False


@pytest.mark.parametrize(
    ("respond", "kind", "status"),
    [
        (None, "refused", None),
        (reset, "reset", None),
        (unavailable, "5xx", 503),
        (truncated, "truncated", None),
        (silent, "timeout", None),
    ],
    ids=["refused", "reset", "503", "truncated", "timeout"],
)
def test_each_failure_has_the_drivers_error_kind(
    binary: Path, respond: Respond | None, kind: str, status: int | None
) -> None:
    records, _, _ = asyncio.run(drive(binary, respond, 0.3, rate=20, timeout_s=0.5))
    assert records
    assert {(r.error, r.status) for r in records} == {(kind, status)}, records[0].detail
    assert all(r.detail for r in records)


def vegeta_children() -> list[int]:
    """This process's children that run vegeta."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"vegeta" in cmdline:
            found.append(int(pid))
    return found


def test_a_cancelled_attack_leaves_no_process(binary: Path) -> None:
    async def main() -> list[int]:
        stop = asyncio.Event()
        server = Server(ok)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        task = asyncio.create_task(
            vegeta.attack(
                spec(binary, f"http://127.0.0.1:{port}"),
                "t",
                iter(f"t-{n:06d}" for n in range(1, 10**6)).__next__,
                stop,
                lambda _: None,
            )
        )
        await asyncio.sleep(0.5)
        running = vegeta_children()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        listener.close()
        assert len(running) == 2  # attack and encode were running
        return vegeta_children()

    assert asyncio.run(main()) == []


def test_an_encoder_that_cannot_start_leaves_no_attack_behind(
    binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack starts (the real vegeta) and the encoder's start fails (as with no
    file descriptor or process left): the error is the caller's, and the attack just
    started does not keep sending with no one reading its results."""
    real_exec = asyncio.create_subprocess_exec

    async def second_fails(*argv: str, **kw: object) -> asyncio.subprocess.Process:
        if "encode" in argv:
            raise OSError(24, "Too many open files")
        return await real_exec(*argv, **kw)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", second_fails)

    async def main() -> None:
        listener = await asyncio.start_server(Server(ok).handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            await vegeta.attack(
                spec(binary, f"http://127.0.0.1:{port}"),
                "t",
                iter(f"t-{n:06d}" for n in range(1, 10**6)).__next__,
                asyncio.Event(),
                lambda _: None,
            )
        finally:
            listener.close()

    with pytest.raises(OSError, match="Too many open files"):
        asyncio.run(main())
    assert vegeta_children() == []


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        ("", 200, None),
        ("", 0, "other"),
        ("503 Service Unavailable", 503, "5xx"),
        ("404 Not Found", 404, "4xx"),
        ('Get "http://x/": dial tcp 127.0.0.1:1: connect: connection refused', 0, "refused"),
        ('Get "http://x/": read tcp 1->2: read: connection reset by peer', 0, "reset"),
        ('Get "http://x/": EOF', 0, "reset"),
        ("unexpected EOF", 0, "truncated"),
        ("read tcp 1->2: read: connection reset by peer", 0, "truncated"),
        (
            "net/http: request canceled (Client.Timeout exceeded while awaiting headers)",
            0,
            "timeout",
        ),
        ('Get "https://x/": remote error: tls: handshake failure', 0, "other"),
    ],
)
def test_error_kind(error: str, code: int, kind: str | None) -> None:
    assert vegeta.error_kind(error, code) == kind


def test_a_result_without_a_request_id_is_not_a_request() -> None:
    # vegeta's own result for the end of the targets: no URL
    assert vegeta.record_of({"url": "", "error": "no targets to attack"}, "t", "/") is None
    line = vegeta.target_line("https://lb", "/", "ab-000007")
    target = json.loads(line)
    assert target["header"][REQUEST_ID_HEADER] == ["ab-000007"]
    assert vegeta.request_id_of(target["url"]) == "ab-000007"
    assert vegeta.target_line("https://lb", "/x?a=1", "r").decode().count("?") == 1


def test_a_tool_not_built_is_named_with_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(gotools.ToolMissing, match=r"vegeta is not built at its pin .*make setup"):
        gotools.binary("vegeta", cache=tmp_path)
    # a scenario that does not need it asks for nothing
    assert gotools.for_scenario("steady") is None
    assert gotools.for_scenario("busy") == gotools.binary("vegeta")


def test_a_busy_run_without_vegeta_is_refused_before_anything_changes(tmp_path: Path) -> None:
    """The validate role asks gotools first: no mode flipped, no lab, no artifacts."""
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "playbooks/run-experiment.yml",
            *("-e", "mode=ordered", "-e", "scenario=busy", "-e", "lab_index=177"),
            *("-e", f"experiment_artifacts={artifacts}", "-e", f"lab_root={tmp_path / 'lab'}"),
        ],
        cwd=ROOT,
        env=os.environ | {"IGW_TOOLS_CACHE": str(tmp_path / "no-tools")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    said = " ".join(result.stdout.split())
    assert "scenario busy: vegeta is not built at its pin" in said, result.stdout[-2000:]
    assert not artifacts.exists() and not (tmp_path / "lab").exists()
