"""runbook.collectors.podlogs: container log lines (hc, the drain script, pilot-agent,
Envoy's access log, the backend) become events, as on both labs' log streams."""

from __future__ import annotations

import json

import pytest

from runbook.collectors.podlogs import event_from_line

TS = "2026-11-22T10:00:00.250Z"
TS_MS = 1795341600250.0


def test_an_hc_transition_becomes_an_event() -> None:
    line = f"ts={TS} level=info app=hc msg=transition from=OPEN to=DRAINING reason=/drain"
    assert event_from_line("igw-1", "hc", line) == {
        "ts_ms": TS_MS,
        "source": "hc",
        "kind": "transition",
        "pod": "igw-1",
        "from": "OPEN",
        "to": "DRAINING",
        "reason": "/drain",
    }


@pytest.mark.parametrize("container", ["hc", "prestop"])
def test_a_drain_script_line_is_a_prestop_step_whichever_stream_carried_it(
    container: str,
) -> None:
    # homelab: mirrored into hc's log (PID 1's stdout); local lab: the hook's own output
    line = f'ts={TS} app=graceful-drain level=info step=3 msg=poll active=2 elapsed=4 url="x y"'
    e = event_from_line("igw-1", container, line)
    assert e is not None
    assert (e["source"], e["kind"], e["step"], e["active"], e["msg"]) == (
        "prestop",
        "step",
        "3",
        "2",
        "poll",
    )


def test_pilot_agent_drain_lines_and_noise() -> None:
    e = event_from_line(
        "igw-1", "istio-proxy", f"ts={TS} app=pilot-agent msg=killing_envoy after_s=20"
    )
    assert e is not None and e["kind"] == "killing_envoy" and e["after_s"] == "20"
    assert (
        event_from_line("igw-1", "istio-proxy", f"ts={TS} app=pilot-agent msg=envoy_started")
        is None
    )
    assert event_from_line("igw-1", "hc", "[warning] not logfmt at all") is None
    assert event_from_line("b-1", "backend", f"ts={TS} app=backend msg=request status=200") is None


@pytest.mark.parametrize(
    ("message", "kind", "fields"),
    # the real pilot-agent's drain (istio pkg/envoy/agent.go), as onebox's logs carry it
    [
        ("There are still 3 active connections", "active_connections", {"active": "3"}),
        (
            "There are no more active connections. terminating proxy...",
            "active_connections",
            {"active": "0"},
        ),
        (
            "Agent draining proxy for 3s, then waiting for active connections to terminate...",
            "drain_listeners",
            {},
        ),
        ("Agent draining Proxy for termination", "drain_listeners", {}),
        (
            "Graceful termination period complete, terminating remaining proxies.",
            "killing_envoy",
            {},
        ),
        ("Envoy aborted normally", "exit", {"how": "normally"}),
    ],
)
def test_the_real_pilot_agent_s_drain_lines_are_the_stand_in_s_events(
    message: str, kind: str, fields: dict[str, str]
) -> None:
    line = f"2026-11-22T10:00:00.250000Z\tinfo\t{message}\n"
    assert event_from_line("igw-1", "istio-proxy", line) == {
        "ts_ms": TS_MS,
        "source": "pilot-agent",
        "kind": kind,
        "pod": "igw-1",
        "container": "istio-proxy",
        **fields,
    }
    scoped = f"2026-11-22T10:00:00.250000Z\tinfo\tenvoy\t{message}"
    assert event_from_line("igw-1", "istio-proxy", scoped) == event_from_line(
        "igw-1", "istio-proxy", line
    )


def test_other_istio_lines_are_noise() -> None:
    for line in (
        "2026-11-22T10:00:00.250000Z\tinfo\txdsproxy\tconnected to upstream XDS server",
        "2026-11-22T10:00:00.250000Z\twarn\tThere are still many active connections",
        "There are still 3 active connections",  # no time, no level: not Istio's line
    ):
        assert event_from_line("igw-1", "istio-proxy", line) is None, line


def test_the_backend_s_idle_close_becomes_an_event_naming_the_peer() -> None:
    line = (
        f"ts={TS} level=info app=backend msg=idle_connection_closed peer=10.244.1.7:41234 "
        "hostname=backend-1 idle_s=75.2"
    )
    e = event_from_line("backend-1", "backend", line)
    assert e is not None
    assert (e["source"], e["kind"], e["peer"], e["idle_s"]) == (
        "backend",
        "idle_close",
        "10.244.1.7:41234",
        "75.2",
    )


def test_access_log_and_backend_lines_become_hop_events() -> None:
    access = json.dumps(
        {"igw_access_log": "1", "request_id": "ab-000001", "response_code": 503}
        | {"response_flags": "UC", "upstream_host": "127.0.0.1:8080"}
    )
    e = event_from_line("gw-1", "istio-proxy", access)
    assert e is not None and (e["source"], e["kind"], e["pod"]) == ("envoy", "access_log", "gw-1")
    assert e["request_id"] == "ab-000001" and "igw_access_log" not in e
    line = f"ts={TS} level=info app=backend msg=request request_id=ab-000001 status=200 path=/"
    b = event_from_line("backend-1", "backend", line)
    assert b is not None and (b["kind"], b["request_id"], b["status"]) == (
        "request",
        "ab-000001",
        "200",
    )
