"""The h2_short class: short requests over one HTTP/2 connection to HAProxy (ALPN h2),
their streams multiplexed on it as browsers and gRPC clients multiplex theirs, driven
by httpx with the h2 library (python-hyper), one RequestRecord a request.

HTTP/2 ends a request in ways HTTP/1.1 has no words for, and each is recorded as
`h2_error` beside the error kind:
- `RST_STREAM <code>`: the peer reset the stream. REFUSED_STREAM says the request was
  not processed (RFC 9113 §8.7), so it is `refused`, like a refused connection: HAProxy
  answers so, with no log line, when the reused server connection it sent the request
  on closed before any response (haproxy/haproxy#3414).
- `GOAWAY <code>`: the connection was ended while the stream was open.
A stream the peer's GOAWAY left unprocessed (above its last stream id) httpcore sends
again on a new connection on its own, as the protocol allows: `resent_by_stack` counts
those sends, read from httpcore's trace of the request.
"""

from __future__ import annotations

from typing import Any

import h2.events
import httpx

from ..artifacts.events import now_ms
from ..model.registry import REQUEST_ID_HEADER
from .records import RequestRecord, status_kind
from .tls import client_tls

#: httpcore's trace event for a stream's request headers going out on an HTTP/2
#: connection: one per send of the request.
_SEND_EVENT = "http2.send_request_headers.started"


def new_client(ca_file: str | None, timeout_s: float, keepalive_s: float) -> httpx.AsyncClient:
    """One HTTP/2 connection to the LB (a new one only when it is gone), idle at most
    `keepalive_s`. No retries of httpx's own (it has none for requests sent)."""
    return httpx.AsyncClient(
        http1=False,
        http2=True,
        verify=client_tls(ca_file),
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(
            max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_s
        ),
    )


def h2_error(exc: BaseException) -> str | None:
    """`RST_STREAM <code>` or `GOAWAY <code>` for an HTTP/2 stream the peer ended, else
    None. httpcore raises RemoteProtocolError with h2's event as its argument."""
    for cause in _chain(exc):
        event = cause.args[0] if cause.args else None
        if isinstance(event, h2.events.StreamReset):
            return f"RST_STREAM {_code(event.error_code)}"
        if isinstance(event, h2.events.ConnectionTerminated):
            return f"GOAWAY {_code(event.error_code)}"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from (httpx re-raises httpcore's errors
    `from` them), nearest first."""
    out: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in out:
        out.append(at)
        at = at.__cause__ or at.__context__
    return out


def _code(code: Any) -> str:
    return str(getattr(code, "name", code))


def classify(exc: BaseException | None, status: int | None) -> str | None:
    """The error kind (records.ERROR_KINDS) of one h2 request."""
    if exc is None:
        return status_kind(status)
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        if any(isinstance(c, ConnectionRefusedError) for c in _chain(exc)):
            return "refused"
        return "reset"
    reset = h2_error(exc)
    if reset == "RST_STREAM REFUSED_STREAM":
        return "refused"  # not processed: as if it had never reached the LB
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "truncated" if status is not None else "reset"
    return "other"


async def fetch(client: httpx.AsyncClient, base_url: str, record: RequestRecord) -> RequestRecord:
    """One GET on the connection's next stream, recorded."""
    sends = 0

    async def trace(name: str, _info: dict[str, Any]) -> None:
        nonlocal sends
        if name == _SEND_EVENT:
            sends += 1

    exc: BaseException | None = None
    headers = {REQUEST_ID_HEADER: record.request_id, "X-Request-Id": record.request_id}
    try:
        async with client.stream(
            "GET", base_url + record.path, headers=headers, extensions={"trace": trace}
        ) as resp:
            record.status = resp.status_code
            async for chunk in resp.aiter_raw():
                if record.first_byte_ms is None:
                    record.first_byte_ms = now_ms()
                record.bytes += len(chunk)
            if record.first_byte_ms is None:
                record.first_byte_ms = now_ms()
    except (httpx.HTTPError, OSError) as e:
        exc = e
    if exc is not None:
        record.detail = f"{type(exc).__name__}: {exc}"[:300]
        record.h2_error = h2_error(exc)
    record.resent_by_stack = max(0, sends - 1)
    record.end_ms = now_ms()
    record.error = classify(exc, record.status)
    return record
