"""The apps' logfmt lines: the backend's fast per-request path writes what the logging
path writes, and a reader gets every value back."""

from __future__ import annotations

import asyncio
import io
import logging
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from applog import LineBuffer, _Formatter, logfmt_value, parse_logfmt


def logging_path_line(msg: str, fields: dict[str, str | int]) -> str:
    out = io.StringIO()
    logger = logging.Logger("backend")
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        _Formatter(
            keys=["ts", "level", "app"],
            mapping={"ts": "asctime", "level": "levelname", "app": "name"},
        )
    )
    logger.addHandler(handler)
    logger.info(msg, extra=fields)
    return out.getvalue().rstrip("\n")


# the one difference, on purpose: a backslash or a single quote in an otherwise plain
# value is quoted (Logfmter leaves it bare and the reader then misreads it), so the
# comparison leaves those two characters out
values = st.one_of(
    st.integers(min_value=0, max_value=10**9),
    st.text(alphabet=st.characters(exclude_characters="\\'"), max_size=40),
)
# the first text draw on a fresh machine builds Hypothesis's character tables (1.5 s
# seen in CI): not slow generation to warn about
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@relaxed
@given(st.dictionaries(st.sampled_from(["path", "remote", "request_id", "status"]), values))
def test_the_fast_line_is_the_logging_line(fields: dict[str, str | int]) -> None:
    fast = os.pipe()
    try:
        LineBuffer("backend", fd=fast[1]).write("request", fields)  # no loop: written at once
        line = os.read(fast[0], 65536).decode().rstrip("\n")
    finally:
        os.close(fast[0])
        os.close(fast[1])
    # the timestamps differ by when each was taken: compare the rest
    assert line.split(" ", 1)[1] == logging_path_line("request", fields).split(" ", 1)[1]


@relaxed
@given(st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=40))
def test_a_reader_gets_the_value_back(value: str) -> None:
    assert parse_logfmt(f"msg=request path={logfmt_value(value)}")["path"] == value


def test_lines_wait_for_the_flush_interval_then_go_in_one_write() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    async def scenario() -> tuple[bytes, bytes]:
        lines = LineBuffer("backend", fd=write_fd, flush_after_s=0.2)
        lines.write("request", {"status": 200})
        lines.write("request", {"status": 404})
        await asyncio.sleep(0.05)
        try:
            early = os.read(read_fd, 65536)
        except BlockingIOError:
            early = b""
        await asyncio.sleep(0.3)
        return early, os.read(read_fd, 65536)

    try:
        early, later = asyncio.run(scenario())
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert early == b""
    statuses = [parse_logfmt(line)["status"] for line in later.decode().splitlines()]
    assert statuses == ["200", "404"]


def test_an_event_written_now_takes_the_waiting_lines_with_it_in_order() -> None:
    read_fd, write_fd = os.pipe()

    async def scenario() -> bytes:
        lines = LineBuffer("backend", fd=write_fd, flush_after_s=10)
        lines.write("request", {"status": 200})
        lines.write("shutdown_started", {"signal": "SIGTERM"}, now=True)
        return os.read(read_fd, 65536)

    try:
        out = asyncio.run(scenario())
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert [parse_logfmt(x)["msg"] for x in out.decode().splitlines()] == [
        "request",
        "shutdown_started",
    ]


def test_a_backslash_or_a_single_quote_is_quoted_for_the_reader() -> None:
    assert logfmt_value("a\\b") == '"a\\\\b"'
    assert logfmt_value("it's") == '"it\'s"'
    value = "it's a\\b"
    assert parse_logfmt("path=" + logfmt_value(value))["path"] == value
