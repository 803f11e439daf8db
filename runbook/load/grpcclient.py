"""The grpc_stream class: server-streaming gRPC calls through HAProxy (TLS, ALPN h2) and
the gateway to the backend's Ticker service (apps/backend/ticker.py), on one channel as
gRPC clients keep one, by grpcio (gRPC's C core), one RequestRecord a call.

A call asks for N messages one interval apart and is whole when all N arrived and the
status is OK. What ended it otherwise is recorded as the client saw it: `grpc_status`
(the status code's name) and its details in `detail`, the messages that arrived in
`chunks`, and when the details name an HTTP/2 reset or GOAWAY, `h2_error` as for
h2_short (`RST_STREAM REFUSED_STREAM` is `refused`: not processed). The error kinds:
- refused: no connection to the LB, or a stream refused unprocessed;
- reset: UNAVAILABLE (or INTERNAL, CANCELLED, UNKNOWN) before any message;
- truncated: the same after some messages, or OK with fewer than asked;
- timeout: DEADLINE_EXCEEDED; 4xx: a code that blames the call (UNIMPLEMENTED: no
  route); 5xx: another code the server side sent.
`status` is 200 when a message or OK came (gRPC answers with HTTP 200 and puts its own
status in the trailers), else None: the call's outcome is its `grpc_status`.

gRPC's own retries are off (`grpc.enable_retries` 0): the C core would otherwise send
again, unseen, a call a GOAWAY or REFUSED_STREAM left unprocessed; a re-send of any
kind still shows as a second HAProxy line for the id (accounting's resent_by_client).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from urllib.parse import urlsplit

import grpc
import h2.errors

from ..artifacts.events import now_ms
from ..model import registry
from ..model.registry import GRPC_TICKS_METHOD, REQUEST_ID_HEADER
from .records import RequestRecord

_RST = re.compile(r"RST_STREAM with error code (\d+)|Received RST_STREAM.*?code[= ](\d+)")
_GOAWAY = re.compile(r"GOAWAY")
_REFUSED_WORDS = ("Connection refused", "connection refused")
_CUT_CODES = ("UNAVAILABLE", "INTERNAL", "CANCELLED", "UNKNOWN")
#: the codes of a call the server side refused as asked (an HTTP 4xx's kin)
_CALLER_CODES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNIMPLEMENTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
)


class NoTrust(ValueError):
    """grpc_stream needs the lab's CA: gRPC's TLS cannot skip verifying the LB."""


#: Why a CA file is required, in the words both refusals use.
_NEEDS_CA = (
    "needs the lab's CA file (--ca): gRPC over TLS cannot skip verifying the LB's certificate"
)


def certificate_name(host: str, port: int, ca_file: str, timeout_s: float = 5) -> str:
    """The first DNS name the LB's certificate carries, read in one TLS handshake with
    the lab's CA (the certificate names the homelab host, not the address asked for;
    gRPC checks the name, so the channel asks for this one). No request is sent, and
    HAProxy logs no line for it (`option dontlognull`)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cert = tls.getpeercert() or {}
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        raise NoTrust(f"the certificate at {host}:{port} names no DNS host (subjectAltName)")
    return names[0]


def require_trust(scenario: str, ca_file: str | None) -> None:
    """NoTrust, naming the scenario, when it drives grpc_stream and no CA file is given:
    a runner calls it before anything starts."""
    if "grpc_stream" in registry.scenario(scenario).classes and not ca_file:
        raise NoTrust(f"scenario {scenario!r} drives grpc_stream, which {_NEEDS_CA}")


def lb_address(base_url: str) -> tuple[str, int]:
    url = urlsplit(base_url)
    return url.hostname or "", url.port or 443


async def new_channel(base_url: str, ca_file: str | None) -> grpc.aio.Channel:
    """One channel (one HTTP/2 connection at a time) to the LB's frontend."""
    if not ca_file:
        raise NoTrust(f"grpc_stream {_NEEDS_CA}")
    host, port = lb_address(base_url)
    with open(ca_file, "rb") as f:
        roots = f.read()
    name = await asyncio.to_thread(certificate_name, host, port, ca_file)
    return grpc.aio.secure_channel(
        f"{host}:{port}",
        grpc.ssl_channel_credentials(root_certificates=roots),
        options=[
            ("grpc.ssl_target_name_override", name),
            ("grpc.default_authority", name),
            ("grpc.enable_retries", 0),
        ],
    )


def ticks_message(messages: int, interval_ms: int) -> bytes:
    """The Ticks request (JSON, as the backend reads it)."""
    return json.dumps({"messages": messages, "interval_ms": interval_ms}).encode()


def h2_error(details: str) -> str | None:
    """`RST_STREAM <code>` or `GOAWAY` when the C core's details name one."""
    found = _RST.search(details)
    if found:
        code = int(found.group(1) or found.group(2))
        try:
            return f"RST_STREAM {h2.errors.ErrorCodes(code).name}"
        except ValueError:
            return f"RST_STREAM {code}"
    if _GOAWAY.search(details):
        return "GOAWAY"
    return None


def classify(code: str, details: str, messages: int, expected: int | None) -> str | None:
    """The error kind (records.ERROR_KINDS) of one call, from its status code's name."""
    if code == "OK":
        return "truncated" if expected is not None and messages < expected else None
    if code == "DEADLINE_EXCEEDED":
        return "timeout"
    if h2_error(details) == "RST_STREAM REFUSED_STREAM":
        return "refused"
    if code in _CUT_CODES:
        if messages:
            return "truncated"
        return "refused" if any(w in details for w in _REFUSED_WORDS) else "reset"
    return "4xx" if code in _CALLER_CODES else "5xx"


async def ticks(
    channel: grpc.aio.Channel, record: RequestRecord, interval_ms: int, timeout_s: float
) -> RequestRecord:
    """One Ticks call of `record.expected_chunks` messages, recorded."""
    call = channel.unary_stream(GRPC_TICKS_METHOD)(
        ticks_message(record.expected_chunks or 1, interval_ms),
        metadata=((REQUEST_ID_HEADER.lower(), record.request_id),),
        timeout=timeout_s,
    )
    details = ""
    try:
        async for message in call:
            if record.first_byte_ms is None:
                record.first_byte_ms = now_ms()
            record.chunks += 1
            record.bytes += len(message)
        code = (await call.code()).name
        details = await call.details() or ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    record.end_ms = now_ms()
    if record.chunks or code == "OK":
        record.status = 200  # the response headers came before any message
    record.grpc_status = code
    if code != "OK":
        record.detail = f"{code}: {details}"[:300]
        record.h2_error = h2_error(details)
    record.error = classify(code, details, record.chunks, record.expected_chunks)
    return record
