"""One request as the client saw it: the record every load class writes, one JSON line
each in requests.raw.jsonl (the driver's own classes and vegeta's alike)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..model.registry import RETRIED_STATUSES

ERROR_KINDS = ("refused", "reset", "timeout", "truncated", "5xx", "4xx", "other")
#: The errors a client retry (registry.CLIENT_RETRIES `once`) sends again: the request
#: got no response at all, so sending it again cannot do it twice.
RETRIED_ERRORS = ("refused", "reset")


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
    planned_s: float = 0.0  # how long it lasts when nothing goes wrong
    #: a retried request's first attempt (its id, times, status, error, detail); the
    #: fields above are the final attempt's, its start the first's
    first_attempt: dict[str, Any] | None = None
    #: HTTP/2: how the peer ended the stream (`RST_STREAM <code>`, `GOAWAY <code>`)
    h2_error: str | None = None
    #: HTTP/2: the sends the client's HTTP stack made again on its own (a stream a
    #: GOAWAY left unprocessed goes out on a new connection); the record is the last's
    resent_by_stack: int = 0
    #: gRPC: the call's status code's name (`OK`, `UNAVAILABLE`, ...), None for HTTP
    grpc_status: str | None = None

    def attempt(self) -> dict[str, Any]:
        """This attempt's outcome, as a first_attempt."""
        return {
            "request_id": self.request_id,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "status": self.status,
            "error": self.error,
            "detail": self.detail,
            "h2_error": self.h2_error,
            "grpc_status": self.grpc_status,
        }

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


def status_kind(status: int | None) -> str | None:
    """The error kind a response's status alone gives (every client's classes): none
    at all is `other`, a 5xx or 4xx its own, any other status None."""
    if status is None:
        return "other"
    if status >= 500:
        return "5xx"
    return "4xx" if status >= 400 else None


def worth_a_retry(record: RequestRecord) -> bool:
    """A request a client retry sends again: no response at all, or a 502, 503, 504."""
    return record.error in RETRIED_ERRORS or (
        record.error == "5xx" and record.status in RETRIED_STATUSES
    )
