"""backend over real sockets: `python -m backend` started as a process."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from helpers import Procs, http


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "seconds is required"),
        ("?seconds=", "got ''"),
        ("?seconds=-1", "got '-1'"),
        ("?seconds=601", "got '601'"),
        ("?seconds=1.5", "got '1.5'"),
        ("?seconds=abc", "got 'abc'"),
        ("?seconds=1e2", "got '1e2'"),
    ],
)
def test_sleep_refuses_bad_seconds_with_a_one_line_reason(
    procs: Procs, query: str, reason: str
) -> None:
    backend = procs.backend()
    status, _, body = http("GET", backend.url + "/sleep" + query)
    assert status == 400
    text = body.decode()
    assert reason in text and "0..600" in text and text.count("\n") == 1


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/sleep?seconds=1&seconds=2", "seconds is given 2 times ('1', '2')"),
        ("/stream?chunks=2&interval_ms=1&chunks=3", "chunks is given 2 times"),
    ],
)
def test_a_repeated_parameter_is_a_400_naming_it(procs: Procs, path: str, named: str) -> None:
    backend = procs.backend()
    status, _, body = http("GET", backend.url + path)
    assert status == 400 and named in body.decode()


def test_sleep_sleeps(procs: Procs) -> None:
    backend = procs.backend()
    assert http("GET", backend.url + "/sleep?seconds=0")[2] == b"slept 0s\n"
    started = time.monotonic()
    status, _, body = http("GET", backend.url + "/sleep?seconds=1")
    assert (status, body) == (200, b"slept 1s\n")
    assert time.monotonic() - started >= 1.0


def test_whoami_names_the_pod(procs: Procs) -> None:
    backend = procs.backend({"HOSTNAME": "backend-7f9c-abcde"})
    assert json.loads(http("GET", backend.url + "/")[2]) == {"pod": "backend-7f9c-abcde"}


def test_stream_flushes_each_chunk_as_written(procs: Procs) -> None:
    backend = procs.backend()
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with urllib.request.urlopen(backend.url + "/stream?chunks=4&interval_ms=300") as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        for raw in resp:
            arrivals.append((time.monotonic() - started, raw.decode().rstrip("\n")))
    assert [line.split(" @ ")[0] for _, line in arrivals] == [f"chunk {i}" for i in range(4)]
    assert all(re.fullmatch(r"chunk \d @ \d+ms", line) for _, line in arrivals)
    # buffered output would arrive all at once at the end (~0.9 s)
    assert arrivals[0][0] < 0.6 and arrivals[-1][0] >= 0.85
    server_ms = [int(line.split(" @ ")[1][:-2]) for _, line in arrivals]
    assert server_ms == sorted(server_ms) and server_ms[-1] >= 850


@pytest.mark.parametrize(
    "query", ["?chunks=0", "?chunks=x", "?interval_ms=-5", "?interval_ms=60001"]
)
def test_stream_refuses_bad_parameters(procs: Procs, query: str) -> None:
    backend = procs.backend()
    status, _, body = http("GET", backend.url + "/stream" + query)
    assert status == 400 and b"must be an integer" in body


def test_one_logfmt_line_per_request_including_client_cuts(procs: Procs) -> None:
    backend = procs.backend({"HOSTNAME": "b-log"})
    http("GET", backend.url + "/")
    http("GET", backend.url + "/sleep?seconds=zz")
    with socket.create_connection((backend.host, backend.port)) as s:
        s.sendall(b"GET /sleep?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    # the client went away: the handler must end (seed: r.Context().Done())
    time.sleep(0.5)
    backend.stop()
    ok = backend.logfmt_lines("request")
    assert [(line["path"], line["status"]) for line in ok] == [
        ("/", "200"),
        ("/sleep?seconds=zz", "400"),
    ]
    for line in ok:
        assert {"ts", "method", "path", "remote", "hostname", "status", "duration_ms"} <= set(line)
        assert line["hostname"] == "b-log"
    cut = backend.logfmt_lines("client_disconnected")
    assert len(cut) == 1 and cut[0]["status"] == "499"
    assert int(cut[0]["duration_ms"]) < 5000


def _get(url: str) -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        status, _, _ = http("GET", url, timeout=30)
        return status, time.monotonic() - started
    except Exception as exc:  # the connection closed under the request
        return type(exc).__name__, time.monotonic() - started


def test_sigterm_refuses_new_connections_and_gives_in_flight_shutdown_timeout(
    procs: Procs,
) -> None:
    backend = procs.backend({"SHUTDOWN_TIMEOUT": "3"})
    with ThreadPoolExecutor(4) as pool:
        short: Future = pool.submit(_get, backend.url + "/sleep?seconds=2")
        long: Future = pool.submit(_get, backend.url + "/sleep?seconds=20")
        time.sleep(0.4)
        t_term = time.monotonic()
        backend.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((backend.host, backend.port), timeout=2)
        assert short.result()[0] == 200
        status, _ = long.result()
        cut_after = time.monotonic() - t_term
    assert status != 200
    # SHUTDOWN_TIMEOUT, not aiohttp's 2 x shutdown_timeout (which would be 6 s)
    assert 2.7 <= cut_after <= 4.5, cut_after
    assert backend.popen.wait(10) == 1  # a request was cut at the deadline
    cut = backend.logfmt_lines("cancelled_at_shutdown_timeout")
    assert len(cut) == 1 and cut[0]["path"] == "/sleep?seconds=20"
    assert backend.logfmt_lines("stopped")[0]["cut_at_shutdown_timeout"] == "1"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_keeps_the_drain_graceful(procs: Procs, sig: signal.Signals) -> None:
    """The seed's Go server reads the first signal only; a second SIGTERM (or a second
    Ctrl-C) must not cut what is in flight. SIGKILL remains the way to force."""
    backend = procs.backend({"SHUTDOWN_TIMEOUT": "30"})
    leaver = socket.create_connection((backend.host, backend.port))
    leaver.sendall(b"GET /sleep?seconds=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    with ThreadPoolExecutor(50) as pool:
        inflight = [pool.submit(_get, backend.url + "/sleep?seconds=3") for _ in range(50)]
        time.sleep(1)
        backend.popen.send_signal(sig)
        time.sleep(0.5)
        leaver.close()  # a client that leaves during the drain is not the deadline's cut
        time.sleep(0.5)
        backend.popen.send_signal(sig)
        results = [f.result()[0] for f in inflight]
    assert results == [200] * 50
    assert backend.popen.wait(10) == 0
    log = backend.log()
    assert "Traceback" not in log
    ignored = backend.logfmt_lines("signal_ignored")
    assert len(ignored) == 1 and ignored[0]["signal"] == sig.name
    assert [f["path"] for f in backend.logfmt_lines("client_disconnected")] == ["/sleep?seconds=20"]
    assert backend.logfmt_lines("cancelled_at_shutdown_timeout") == []


@pytest.mark.parametrize(
    ("env", "named"),
    [({"PORT": "http"}, "PORT='http'"), ({"SHUTDOWN_TIMEOUT": "-5"}, "SHUTDOWN_TIMEOUT='-5'")],
)
def test_bad_settings_exit_2_naming_the_value(env: dict[str, str], named: str) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "backend"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and named in result.stderr


@pytest.mark.parametrize("through_envoy", [False, True])
def test_websocket_echoes_each_message_directly_and_through_the_gateway(
    procs: Procs, through_envoy: bool
) -> None:
    """The steady scenario's ws class: the load driver's own client against the real
    backend, and through the real Envoy with the lab's bootstrap (upgrade_configs)."""
    import asyncio

    from runbook.artifacts.events import now_ms
    from runbook.load.driver import new_session, websocket
    from runbook.load.records import RequestRecord

    backend = procs.backend()
    base = procs.envoy(backend).url if through_envoy else backend.url

    async def session() -> RequestRecord:
        record = RequestRecord(1, "ws-test-000001", "ws", "/ws", now_ms(), expected_chunks=4)
        async with new_session(None, 10) as s:
            return await websocket(s, base, record, interval_ms=100)

    record = asyncio.run(session())
    assert record.error is None, record.detail
    assert (record.status, record.chunks) == (101, 4)
    # the backend logs the session once its handler returns, just after the client closed
    deadline = time.monotonic() + 5
    while "status=101" not in backend.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "path=/ws" in backend.log() and "status=101" in backend.log()
