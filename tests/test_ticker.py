"""The backend's gRPC service over real sockets (`python -m backend.ticker` as a process)
and grpc_stream's client against it: every way a call ends has its error kind."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from backend import server as backend_server
from backend import ticker
from helpers import Proc, Procs, free_port
from runbook.load import grpcclient
from runbook.load.records import RequestRecord
from runbook.model import registry


def test_the_service_and_the_registry_name_the_same_method_and_header() -> None:
    assert ticker.TICKS == registry.GRPC_TICKS_METHOD
    assert registry.GRPC_TICKS_METHOD.startswith(registry.GRPC_ROUTE_PREFIX)
    assert backend_server.REQUEST_ID_HEADER == registry.REQUEST_ID_HEADER


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"not json", "must be JSON"),
        (b"[1]", "a JSON object, got list"),
        (b'{"messages": 0}', "messages must be an integer 1..100000, got 0"),
        (b'{"messages": 1.5}', "got 1.5"),
        (b'{"messages": true}', "got True"),
        (b'{"interval_ms": 60001}', "interval_ms must be an integer 0..60000"),
        (b'{"seconds": 3}', "unknown fields ['seconds']"),
    ],
)
def test_a_bad_ticks_request_is_refused_naming_what_is_wrong(raw: bytes, named: str) -> None:
    with pytest.raises(ticker.BadRequest, match=named.replace("[", r"\[").replace("]", r"\]")):
        ticker.ticks_request(raw)


def test_an_empty_request_takes_the_defaults() -> None:
    assert ticker.ticks_request(b"") == (10, 1000)


def call(proc: Proc, raw: bytes, request_id: str = "") -> tuple[list[bytes], str, str]:
    """(messages, status code's name, details) of one Ticks call, by a plain channel."""

    async def go() -> tuple[list[bytes], str, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            got: list[bytes] = []
            c = channel.unary_stream(ticker.TICKS)(
                raw, metadata=(("x-igw-request-id", request_id),), timeout=20
            )
            try:
                async for m in c:
                    got.append(m)
                return got, (await c.code()).name, await c.details() or ""
            except grpc.aio.AioRpcError as exc:
                return got, exc.code().name, exc.details() or ""

    return asyncio.run(go())


def health(proc: Proc) -> bytes:
    async def go() -> bytes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            return await channel.unary_unary(f"/{ticker.HEALTH_SERVICE}/Check")(b"", timeout=5)

    return asyncio.run(go())


def test_ticks_sends_each_message_an_interval_apart_and_logs_the_call(procs: Procs) -> None:
    proc = procs.ticker()
    started = time.monotonic()
    got, code, _ = call(proc, grpcclient.ticks_message(4, 200), "t-000001")
    assert code == "OK" and len(got) == 4 and time.monotonic() - started >= 0.6
    assert got[0].startswith(b"tick 0 @ ") and got[3].startswith(b"tick 3 @ ")
    proc.stop()
    (line,) = proc.logfmt_lines("request")
    assert line["request_id"] == "t-000001" and line["path"] == registry.GRPC_TICKS_METHOD
    assert (line["status"], line["grpc_status"], line["messages"]) == ("200", "OK", "4")


def test_a_bad_call_is_invalid_argument_with_its_reason(procs: Procs) -> None:
    proc = procs.ticker()
    got, code, details = call(proc, b'{"messages": 0}')
    assert (got, code) == ([], "INVALID_ARGUMENT") and "got 0" in details
    proc.stop()
    (line,) = proc.logfmt_lines("request")
    assert (line["status"], line["grpc_status"]) == ("400", "INVALID_ARGUMENT")


def test_health_says_serving_until_the_signal_then_the_drain_keeps_calls_whole(
    procs: Procs,
) -> None:
    proc = procs.ticker({"SHUTDOWN_TIMEOUT": "20"})
    assert health(proc) == ticker.SERVING
    result: dict[str, tuple[list[bytes], str, str]] = {}
    inflight = threading.Thread(
        target=lambda: result.update(one=call(proc, grpcclient.ticks_message(8, 250)))
    )
    inflight.start()
    time.sleep(0.6)
    proc.popen.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # a new call after the signal is refused: the listener is closed
    _, code, _ = call(proc, grpcclient.ticks_message(1, 0))
    assert code == "UNAVAILABLE"
    proc.popen.send_signal(signal.SIGTERM)  # a second signal does not shorten the drain
    inflight.join(10)
    got, code, _ = result["one"]
    assert code == "OK" and len(got) == 8
    assert proc.popen.wait(10) == 0
    assert proc.logfmt_lines("signal_ignored")
    assert proc.logfmt_lines("stopped")[0]["cut_at_shutdown_timeout"] == "0"


def test_a_call_still_running_at_the_deadline_is_cut_and_said(procs: Procs) -> None:
    proc = procs.ticker({"SHUTDOWN_TIMEOUT": "1"})
    result: dict[str, tuple[list[bytes], str, str]] = {}
    inflight = threading.Thread(
        target=lambda: result.update(one=call(proc, grpcclient.ticks_message(40, 100), "t-9"))
    )
    inflight.start()
    time.sleep(0.5)
    proc.popen.send_signal(signal.SIGTERM)
    inflight.join(10)
    got, code, _ = result["one"]
    assert code == "UNAVAILABLE" and 5 <= len(got) < 40
    assert proc.popen.wait(10) == 1
    (cut,) = proc.logfmt_lines("cancelled_at_shutdown_timeout")
    assert (cut["request_id"], cut["status"]) == ("t-9", "503")
    # the cut line comes before the last one, which counts it
    assert proc.logfmt_lines("stopped")[0]["cut_at_shutdown_timeout"] == "1"


def record(n: int, expected: int) -> RequestRecord:
    return RequestRecord(
        n, f"t-{n:06d}", "grpc_stream", registry.GRPC_TICKS_METHOD, 0.0, expected_chunks=expected
    )


def ticks_through(port: int, rec: RequestRecord, kill: Proc | None = None) -> RequestRecord:
    """grpc_stream's client call on a plain channel (`kill`: SIGKILL it mid-call)."""

    async def go() -> RequestRecord:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.enable_retries", 0)]
        ) as channel:
            if kill is not None:
                asyncio.get_running_loop().call_later(0.5, kill.popen.kill)
            return await grpcclient.ticks(channel, rec, interval_ms=100, timeout_s=10)

    return asyncio.run(go())


def test_the_client_records_a_whole_call(procs: Procs) -> None:
    proc = procs.ticker()
    done = ticks_through(proc.port, record(1, 3))
    assert (done.error, done.grpc_status, done.status, done.chunks) == (None, "OK", 200, 3)
    assert done.first_byte_ms is not None and done.end_ms is not None


def test_the_client_records_a_call_cut_mid_stream_as_truncated(procs: Procs) -> None:
    proc = procs.ticker()
    done = ticks_through(proc.port, record(2, 50), kill=proc)
    assert (done.error, done.grpc_status) == ("truncated", "UNAVAILABLE")
    assert 1 <= done.chunks < 50 and done.detail.startswith("UNAVAILABLE: ")


def test_the_client_records_no_listener_as_refused() -> None:
    done = ticks_through(free_port(), record(3, 2))
    assert (done.error, done.grpc_status, done.status, done.chunks) == (
        "refused",
        "UNAVAILABLE",
        None,
        0,
    )


@pytest.mark.parametrize(
    ("code", "details", "messages", "kind"),
    [
        ("OK", "", 3, None),
        ("OK", "", 2, "truncated"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", 0, "timeout"),
        ("UNAVAILABLE", "Received RST_STREAM with error code 7", 0, "refused"),
        ("UNAVAILABLE", "failed to connect ...: Connection refused", 0, "refused"),
        ("UNAVAILABLE", "Socket closed", 0, "reset"),
        ("INTERNAL", "Received RST_STREAM with error code 2", 1, "truncated"),
        ("UNIMPLEMENTED", "", 0, "4xx"),
        ("RESOURCE_EXHAUSTED", "", 0, "5xx"),
    ],
)
def test_each_end_of_a_call_has_its_kind(
    code: str, details: str, messages: int, kind: str | None
) -> None:
    assert grpcclient.classify(code, details, messages, 3) == kind


@pytest.mark.parametrize(
    ("details", "named"),
    [
        ("Received RST_STREAM with error code 7", "RST_STREAM REFUSED_STREAM"),
        ("Received RST_STREAM with error code 2", "RST_STREAM INTERNAL_ERROR"),
        ("Received RST_STREAM with error code 99", "RST_STREAM 99"),
        ("GOAWAY received", "GOAWAY"),
        ("Socket closed", None),
    ],
)
def test_an_http2_reset_in_the_details_is_named(details: str, named: str | None) -> None:
    assert grpcclient.h2_error(details) == named


def test_the_channel_takes_the_name_the_lb_certificate_carries(tmp_path: Path) -> None:
    """The lab's certificate names the homelab host, not the address asked for: the
    client reads the name in a handshake that the lab's CA verifies."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=igw test",
            "-addext",
            "subjectAltName=DNS:igw.test.internal,DNS:other.internal",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True):
            pass

    t = threading.Thread(target=serve_one)
    t.start()
    try:
        assert grpcclient.certificate_name("127.0.0.1", port, str(cert)) == "igw.test.internal"
    finally:
        t.join(5)
        listener.close()


def test_no_ca_is_refused_naming_why() -> None:
    with pytest.raises(grpcclient.NoTrust, match="needs the lab's CA file"):
        asyncio.run(grpcclient.new_channel("https://127.0.0.1:1", None))


def test_the_request_body_is_what_the_service_reads() -> None:
    assert ticker.ticks_request(grpcclient.ticks_message(7, 250)) == (7, 250)
    assert json.loads(grpcclient.ticks_message(1, 0)) == {"messages": 1, "interval_ms": 0}
