"""One request class at a high constant rate, driven by vegeta (built from its pinned Go
module: runbook.runners.gotools), with one record per request like the driver's own.

Where the asyncio driver cannot hold a thousand requests a second on this machine,
vegeta does, over a keep-alive pool:

    targets (JSON, one a line, each with its own request id) -> vegeta attack -lazy
        -> results (gob) -> vegeta encode --to json -> one RequestRecord a result

Each target carries its request id twice: in the id header every hop logs
(registry.REQUEST_ID_HEADER) and in the URL's query (`igw_rid`), because vegeta's
result names the URL it asked for but not the headers it sent. Targets are written
only as fast as vegeta reads them (the pipe's buffer: well under a second ahead), so
ids written and never sent are few; none of them has a record, as nothing was sent.
Stopping sends vegeta SIGINT: it sends nothing new, waits for what is in flight, writes
those results and exits (its attack command's first signal stops the attack).

Go's HTTP client re-sends an idempotent request once when a reused connection closes
before any response byte (net/http's Transport: a GET on a connection the server had
closed). The client then sees one request; HAProxy logs the id twice. The accounting
reads that from HAProxy's lines (`index_hops`), never from the client's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..model.registry import REQUEST_ID_HEADER
from .records import RequestRecord

#: The query parameter that names a target's request id in vegeta's result.
RID_PARAM = "igw_rid"
#: How many targets are written at a time (a tenth of a second at 1,000 a second).
BATCH = 100


@dataclass(frozen=True, slots=True)
class VegetaClass:
    """One class's attack: what vegeta is told."""

    binary: Path
    base_url: str
    path: str
    rate_per_s: float
    connections: int
    timeout_s: float

    def attack_argv(self) -> list[str]:
        return [
            str(self.binary),
            "attack",
            "-lazy",
            "-format=json",
            f"-rate={round(self.rate_per_s)}/1s",
            "-duration=0",  # until the targets end
            f"-connections={self.connections}",
            f"-max-connections={self.connections}",
            # enough workers for the pool from the start, so the rate never waits on a
            # new goroutine; never more than the pool can serve at once
            f"-workers={self.connections}",
            f"-max-workers={self.connections}",
            f"-timeout={self.timeout_s:g}s",
            "-http2=false",  # HTTP/1.1 to HAProxy, as the driver's own classes
            "-keepalive=true",
            "-redirects=-1",  # a redirect is an answer, as for the driver's own classes
            "-max-body=256",
            # the lab's certificate names the homelab host, not the address asked for
            "-insecure",
        ]


def target_line(base_url: str, path: str, request_id: str) -> bytes:
    """One JSON target: GET path?igw_rid=<id> with the id header."""
    sep = "&" if "?" in path else "?"
    target = {
        "method": "GET",
        "url": f"{base_url}{path}{sep}{RID_PARAM}={request_id}",
        "header": {REQUEST_ID_HEADER: [request_id], "X-Request-Id": [request_id]},
    }
    return json.dumps(target, separators=(",", ":")).encode() + b"\n"


def request_id_of(url: str) -> str | None:
    """The id a result's URL carries, or None (vegeta's own end-of-targets result)."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get(RID_PARAM)
    return values[0] if values else None


#: Go's client wraps what fails before a response in url.Error: `Get "<url>": <cause>`
#: (the method capitalised, net/http's urlErrorOp).
#: vegeta reports a failure reading the body unwrapped, after the status line came.
_BEFORE_RESPONSE = re.compile(r'^[A-Z][a-z]+ "[^"]*": ')


def error_kind(error: str, code: int) -> str | None:
    """The driver's error kind (records.ERROR_KINDS) for one vegeta result."""
    if code >= 500:
        return "5xx"
    if code >= 400:
        return "4xx"
    if not error:
        return None if code else "other"
    text = error.lower()
    if "timeout" in text or "deadline exceeded" in text:
        return "timeout"
    if not _BEFORE_RESPONSE.match(error):
        return "truncated"  # the response began and its body did not end
    if "connection refused" in text:
        return "refused"
    if "connection reset" in text or text.endswith(": eof"):
        return "reset"  # closed under us before a status line
    return "other"


def record_of(result: dict[str, Any], cls: str, path: str) -> RequestRecord | None:
    """A result as the driver's record (None for one without a request id)."""
    rid = request_id_of(str(result.get("url") or ""))
    if rid is None:
        return None
    start = datetime.fromisoformat(str(result["timestamp"])).timestamp() * 1000
    code = int(result.get("code") or 0)
    error = str(result.get("error") or "")
    return RequestRecord(
        id=int(rid.rsplit("-", 1)[-1]),
        request_id=rid,
        cls=cls,
        path=path,
        start_ms=round(start, 3),
        end_ms=round(start + int(result.get("latency") or 0) / 1e6, 3),
        status=code or None,
        bytes=int(result.get("bytes_in") or 0),
        error=error_kind(error, code),
        detail=error[:300] or None,
    )


async def _feed(
    attacker: asyncio.subprocess.Process,
    spec: VegetaClass,
    next_id: Callable[[], str],
    stop: asyncio.Event,
) -> None:
    """Targets, a batch at a time, as fast as vegeta takes them, until stopped; then
    SIGINT, on which vegeta's attack sends nothing more (not even the targets still in
    the pipe) and ends once what is in flight has its result."""
    stdin = attacker.stdin
    assert stdin is not None
    try:
        while not stop.is_set():
            stdin.write(
                b"".join(target_line(spec.base_url, spec.path, next_id()) for _ in range(BATCH))
            )
            drained = asyncio.ensure_future(stdin.drain())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not drained.done():
                drained.cancel()
    except (BrokenPipeError, ConnectionResetError):
        pass  # vegeta has ended: its result says why
    finally:
        if attacker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                attacker.send_signal(signal.SIGINT)
        with contextlib.suppress(OSError):
            stdin.close()


async def attack(
    spec: VegetaClass,
    cls: str,
    next_id: Callable[[], str],
    stop: asyncio.Event,
    write: Callable[[RequestRecord], None],
) -> None:
    """Drive `cls` at the spec's rate until `stop`, then wait for every result. A run
    cut short (cancelled) kills both processes: nothing is left behind."""
    read_fd, write_fd = os.pipe()
    try:
        attacker = await asyncio.create_subprocess_exec(
            *spec.attack_argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=write_fd,
            stderr=asyncio.subprocess.PIPE,
            # signals are the runner's to handle (runbook.runners.signals): a Ctrl-C at
            # the terminal reaches it, and it stops or kills these
            start_new_session=True,
        )
        try:
            encoder = await asyncio.create_subprocess_exec(
                str(spec.binary),
                "encode",
                "--to=json",
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            # the attack just started has no reader: it must not outlive the failure
            with contextlib.suppress(ProcessLookupError):
                attacker.kill()
            await attacker.wait()
            raise
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert encoder.stdout is not None
    feeder = asyncio.create_task(_feed(attacker, spec, next_id, stop))
    try:
        async for line in encoder.stdout:
            record = record_of(json.loads(line), cls, spec.path)
            if record is not None:
                write(record)
        await feeder
        errors = await attacker.stderr.read() if attacker.stderr else b""
        codes = (await attacker.wait(), await encoder.wait())
        if codes != (0, 0):
            raise RuntimeError(
                f"vegeta exited {codes[0]} (attack) and {codes[1]} (encode): "
                f"{errors.decode(errors='replace').strip()[-300:]}"
            )
    finally:
        feeder.cancel()
        for proc in (attacker, encoder):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
