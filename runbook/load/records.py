"""One request as the client saw it: the record every load class writes, one JSON line
each in requests.raw.jsonl (the driver's own classes and vegeta's alike)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
    planned_s: float = 0.0  # how long it lasts when nothing goes wrong

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
