"""graceful-drain.sh under /bin/sh against a real Envoy, a real hc and a real backend."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import NamedTuple

import pytest

from helpers import DRAIN_SCRIPT, Proc, Procs, free_port, http
from runbook.model import timing


def run_drain(
    env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        ["/bin/sh", str(DRAIN_SCRIPT)],
        env={"PATH": os.environ["PATH"], "LOG_MIRROR": "", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def transitions(hc: Proc) -> dict[str, float]:
    doc = json.loads(http("GET", hc.url + "/drain/status")[2])
    return {t["to"]: t["wall"] for t in doc["progress"]["transitions"]}


def timed_get(url: str) -> tuple[int, float]:
    status, _, _ = http("GET", url, timeout=60)
    return status, time.time()


class DrainRun(NamedTuple):
    hc: Proc
    #: the drain script's result
    result: subprocess.CompletedProcess[str]
    #: how long the script took, in seconds
    took: float
    #: the in-flight request's status
    status: int
    #: when the request ended
    ended: float


def drain_with_a_request_in_flight(procs: Procs, settings: dict[str, str]) -> DrainRun:
    """A real backend, Envoy and hc; a 3 s request through Envoy, and 0.5 s into it the
    drain script with `settings`: (hc, the script's result, its duration, the request's
    status and end)."""
    backend = procs.backend()
    envoy = procs.envoy(backend)
    hc = procs.hc()
    with ThreadPoolExecutor(2) as pool:
        request = pool.submit(timed_get, f"{envoy.url}/sleep?seconds=3")
        time.sleep(0.5)
        result, took = run_drain(
            {
                "HC_URL": hc.url,
                "ENVOY_ADMIN": str(envoy.extra["admin"]),
                "GATEWAY_PORT": str(envoy.port),
                "DRAIN_TIMEOUT": "30",
                "POLL_INTERVAL": "0.5",
                **settings,
            }
        )
        status, ended = request.result()
    return DrainRun(hc, result, took, status, ended)


def test_in_flight_survives_and_zero_is_seen_long_before_the_timeout(procs: Procs) -> None:
    hc, result, took, status, ended = drain_with_a_request_in_flight(procs, {"LB_BUFFER": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert status == 200
    assert "msg=drained" in result.stdout and "outcome=drained" in result.stdout
    assert "active=1" in result.stdout and "active=0" in result.stdout
    # zero after ~2.5 s of the 3 s request, + LB_BUFFER 2: nowhere near DRAIN_TIMEOUT 30
    assert took < 8, result.stdout
    t = transitions(hc)
    assert list(t) == ["DRAINING", "CLOSING", "CLOSED"]
    # /health_check.html flips only after the in-flight request ended...
    assert t["CLOSING"] >= ended - 0.05, (t, ended)
    # ...and /health LB_BUFFER later
    assert 1.9 <= t["CLOSED"] - t["CLOSING"] <= 3.0
    assert http("GET", hc.url + "/health")[0] == 503


def test_lb_first_order_stops_new_traffic_before_envoy_drains(procs: Procs) -> None:
    """DRAIN_ORDER=lb-first (ordered mode): 404 first, Envoy drained only NOLB_WAIT
    later, the in-flight request finishes, then the LB check fails and readiness."""
    hc, result, took, status, ended = drain_with_a_request_in_flight(
        procs, {"DRAIN_ORDER": "lb-first", "NOLB_WAIT": "1.5", "LB_BUFFER": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert status == 200
    assert "order=lb-first" in result.stdout and "outcome=drained" in result.stdout
    t = transitions(hc)
    assert list(t) == ["NOLB", "CLOSING", "CLOSED"]
    # Envoy's drain came NOLB_WAIT after the 404 (its step's log line, in wall time)
    drained_at = next(
        line.split()[0].removeprefix("ts=")
        for line in result.stdout.splitlines()
        if "step=2 msg=ok" in line
    )
    drain_wall = datetime.fromisoformat(drained_at.replace("Z", "+00:00")).timestamp()
    assert drain_wall - t["NOLB"] >= 1.5
    assert t["CLOSING"] >= ended - 0.05, (t, ended)
    assert took < 8, result.stdout


def test_the_seed_filter_never_reaches_zero(procs: Procs) -> None:
    """docs/design.md: `downstream_rq_active|upstream_rq_active` counts the admin's own /stats."""
    backend = procs.backend()
    envoy = procs.envoy(backend)
    hc = procs.hc()
    result, took = run_drain(
        {
            "HC_URL": hc.url,
            "ENVOY_ADMIN": str(envoy.extra["admin"]),
            "ACTIVE_STATS_FILTER": "downstream_rq_active|upstream_rq_active",
            "DRAIN_TIMEOUT": "3",
            "POLL_INTERVAL": "0.5",
            "LB_BUFFER": "0",
        }
    )
    # no traffic at all, and still no zero
    assert "active=0" not in result.stdout
    assert "outcome=timeout" in result.stdout and took >= 2.5


def test_unreachable_admin_is_unknown_not_zero_and_still_ends_in_time(procs: Procs) -> None:
    hc = procs.hc()
    result, took = run_drain(
        {
            "HC_URL": hc.url,
            "ENVOY_ADMIN": f"http://127.0.0.1:{free_port()}",
            "DRAIN_TIMEOUT": "3",
            "POLL_INTERVAL": "0.5",
            "LB_BUFFER": "1",
        }
    )
    assert result.returncode == 0
    assert "msg=active_unknown" in result.stdout and "msg=drain_timeout_exceeded" in result.stdout
    assert "step=2 msg=curl_failed" in result.stdout
    assert took <= 3 + 1 + 1.5, took  # DRAIN_TIMEOUT + LB_BUFFER + slack
    t = transitions(hc)
    assert list(t) == ["DRAINING", "CLOSING", "CLOSED"]
    # unknown never counted as zero: the LB flip waited for the deadline
    assert t["CLOSING"] - t["DRAINING"] >= 2.0
    assert json.loads(http("GET", hc.url + "/drain/status")[2])["state"] == "CLOSED"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DRAIN_TIMEOUT", "2m"),
        ("DRAIN_TIMEOUT", "0"),
        ("DRAIN_TIMEOUT", "99999999999999999999"),  # once: "Illegal number" mid-drain
        ("POLL_INTERVAL", "0"),  # once: a tight loop of polls
        ("POLL_INTERVAL", "."),  # once: `sleep .` spinning on its error
        ("POLL_INTERVAL", "1.2.3"),
        ("POLL_INTERVAL", "0.01"),
        ("POLL_INTERVAL", "61"),
        ("CURL_MAX_TIME", "0"),  # once: no limit, a hung peer held the preStop
        ("LB_BUFFER", "-1"),
        ("LB_BUFFER", "601"),
        ("GATEWAY_PORT", "70000"),
        ("DRAIN_ORDER", "lbfirst"),
        ("NOLB_WAIT", "0"),
    ],
)
def test_bad_setting_is_refused_before_anything_is_sent(procs: Procs, var: str, value: str) -> None:
    hc = procs.hc()
    envoy_admin = procs.backend()  # stands in for Envoy's admin: it logs every request
    result, took = run_drain({"HC_URL": hc.url, "ENVOY_ADMIN": envoy_admin.url, var: value})
    assert result.returncode == 2, result.stdout
    (line,) = result.stdout.splitlines()
    assert f'msg=bad_setting var={var} value="{value}" allowed=' in line
    assert took < 2
    assert json.loads(http("GET", hc.url + "/drain/status")[2])["state"] == "OPEN"
    assert "msg=request" not in envoy_admin.log()


@pytest.mark.parametrize(("key", "limits"), list(timing.DRAIN_SCRIPT_LIMITS.items()))
def test_the_script_accepts_exactly_the_models_range(
    procs: Procs, key: str, limits: tuple[str, float, float]
) -> None:
    """Each edge of the model's range is accepted by the script (it gets past the
    checks and logs its start) and the value just outside is refused."""
    var, low, high = limits
    step = 0.05 if var in ("POLL_INTERVAL", "NOLB_WAIT") else 1
    base = {
        "HC_URL": f"http://127.0.0.1:{free_port()}",
        "ENVOY_ADMIN": f"http://127.0.0.1:{free_port()}",
        "DRAIN_TIMEOUT": "1",
        "POLL_INTERVAL": "1",
        "LB_BUFFER": "0",
        "CURL_MAX_TIME": "1",
    }
    for value, ok in ((low, True), (high, True), (low - step, False), (high + step, False)):
        if value < 0:
            continue
        text = f"{value:g}"
        # the first line says it: the refusal, or the start (then it is stopped: an
        # accepted 3600 s must not make the test wait)
        proc = subprocess.Popen(
            ["/bin/sh", str(DRAIN_SCRIPT)],
            env={"PATH": os.environ["PATH"], "LOG_MIRROR": "", **base, var: text},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        started = "msg=start" in first
        assert started is ok, (var, text, first)


def test_log_lines_are_mirrored_when_the_target_is_writable(procs: Procs, tmp_path) -> None:
    hc = procs.hc()
    mirror = tmp_path / "pid1-stdout"
    mirror.touch()
    result, _ = run_drain(
        {
            "HC_URL": hc.url,
            "ENVOY_ADMIN": f"http://127.0.0.1:{free_port()}",
            "DRAIN_TIMEOUT": "1",
            "POLL_INTERVAL": "0.2",
            "LB_BUFFER": "0",
            "LOG_MIRROR": str(mirror),
        }
    )
    mirrored = mirror.read_text().splitlines()
    assert mirrored == result.stdout.splitlines() and len(mirrored) >= 5
    assert all(line.startswith("ts=") and "app=graceful-drain" in line for line in mirrored)
