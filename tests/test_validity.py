"""runbook.analysis.validity, rule by rule on hand-made events: a run counts only if its
lab held steady and every failure is the termination's."""

from __future__ import annotations

from runbook.analysis.validity import servers_out, validity

T = 100_000.0  # the termination, ms
TERM = {"ms": T, "pod": "gw-worker1", "node": "worker1", "lb": "lab-haproxy"}


def state(dt_ms: float, server: str, status: str, lb: str = "lab-haproxy") -> dict:
    return {
        "ts_ms": T + dt_ms,
        "source": "haproxy",
        "lb": lb,
        "kind": "server_state",
        "server": server,
        "status": status,
    }


def check_failed(dt_ms: float, server: str, why: str) -> dict:
    line = (
        f"Health check for server igw_nodeports/{server} failed, reason: {why}, status: 0/2 DOWN."
    )
    return {
        "ts_ms": T + dt_ms,
        "source": "haproxy",
        "lb": "lab-haproxy",
        "kind": "health_check_log",
        "line": line,
    }


STEADY = [
    # bring-up: both DOWN until their pods are ready, then UP; none of it counts
    state(-20_000, "worker1", "DOWN"),
    state(-20_000, "worker2", "DOWN"),
    state(-15_000, "worker1", "UP"),
    state(-15_000, "worker2", "UP"),
    # the termination takes the victim's node out: what the run measures
    state(500, "worker1", "NOLB"),
    state(9_000, "worker1", "DOWN"),
]


def failure(
    at_s: float,
    rule: str = "lb_killed_session_at_down",
    node: str | None = "worker1",
    pod: str | None = "gw-worker1",
    error: str = "http_502",
) -> dict:
    return {
        "at_s": at_s,
        "rule": rule,
        "error": error,
        # the local lab's HAProxy is on no node: its server is its node
        "served_by": {
            "lb_server": node,
            "node": None if node == "<NOSRV>" else node,
            "gateway_pod": pod,
            "backend_pod": None,
        },
    }


def test_a_steady_lab_whose_failures_are_the_victims_is_valid() -> None:
    v = validity(STEADY, [failure(1.2), failure(9.0, rule="gateway_aborted_response")], TERM)
    assert v.valid and v.reasons == [] and v.servers_out == []


def test_a_survivor_marked_down_makes_the_run_invalid_and_says_why() -> None:
    events = [
        *STEADY,
        check_failed(540, "worker2", "Layer7 timeout, check duration: 501ms"),
        state(560, "worker2", "DOWN"),
    ]
    failed = [
        *[failure(0.6, rule="lb_killed_session_at_down", node="worker2", pod="gw-worker2")] * 9,
        # HAProxy names no server `<NOSRV>`
        *[failure(0.7, rule="lb_no_server", node="<NOSRV>", pod=None, error="http_503")] * 31,
    ]
    v = validity(events, failed, TERM)
    assert not v.valid
    assert v.reasons[0] == (
        "worker2 (a survivor) marked DOWN at +0.56 s by a failed check (Layer7 timeout, "
        "check duration: 501ms): the lab was unsteady, not the order; 9 requests failed on "
        "it and 31 found no server"
    )
    assert v.reasons[1] == (
        "40 failures were not on the terminating gateway (no server x31, worker2 x9; "
        "lb_no_server x31, lb_killed_session_at_down x9)"
    )
    assert [(o.server, o.status, o.ts_ms - T) for o in v.servers_out] == [("worker2", "DOWN", 560)]


def test_only_this_runs_lb_and_only_after_bring_up() -> None:
    events = [*STEADY, state(700, "worker2", "DOWN", lb="another-lb")]
    assert servers_out(events, "lab-haproxy", {"worker1": T}) == []
    # a server that never came UP is still starting, not falsely DOWN
    assert servers_out([state(-1000, "worker2", "DOWN")], "lab-haproxy", {"worker1": T}) == []


def test_a_check_failing_without_a_state_change_is_not_a_down() -> None:
    events = [
        *STEADY,
        check_failed(540, "worker2", "Layer7 timeout"),
        state(541, "worker2", "UP 1/2"),
    ]
    assert validity(events, [], TERM).valid


def test_the_victims_node_out_before_the_termination_is_the_lab() -> None:
    events = [*STEADY[:4], state(-3000, "worker1", "DOWN"), state(-2000, "worker1", "UP")]
    (reason,) = validity(events, [], TERM).reasons
    assert reason.startswith(
        "worker1 (the victim's node before its termination) marked DOWN at -3.00 s"
    )


def test_a_failure_before_the_termination_is_the_lab() -> None:
    (reason,) = validity(
        STEADY, [failure(-4.5, rule="lb_no_server", error="http_503")], TERM
    ).reasons
    assert reason == "1 requests failed before the termination (first at -4.50 s; http_503 x1)"


def test_a_failure_without_a_cause_rule_is_not_counted_as_the_orders() -> None:
    (reason,) = validity(STEADY, [failure(2.0, rule="unexplained", error="timeout")], TERM).reasons
    assert reason == "1 failures have no cause rule (timeout x1)"


def test_a_failure_known_only_by_its_gateway_pod_is_the_victims() -> None:
    # no HAProxy line (missing hop), but the victim's Envoy served it
    assert validity(STEADY, [failure(3.0, node=None, pod="gw-worker1")], TERM).valid


def test_the_lb_s_own_node_out_by_the_victim_s_hc_is_the_termination_s() -> None:
    """Seen on onebox (ordered): HAProxy on worker1 checks worker1's NodePort, kube-proxy
    sends that check to any ready hc, and in the instant before it drops the terminating
    endpoint the victim's hc answered 404: worker1 NOLB at +0.19 s, and with worker2
    NOLB too, 6 requests found no server. The termination did that, not a starved lab; a
    timeout on the same server is still the lab's."""
    term = {"ms": T, "pod": "gw-worker2", "node": "worker2", "lb": "worker1"}

    def on_worker1(e: dict) -> dict:
        return e | {"lb": "worker1"}

    base = [on_worker1(e) for e in STEADY[:4]]
    answered = {
        "ts_ms": T + 180,
        "source": "haproxy",
        "lb": "worker1",
        "kind": "health_check_log",
        "line": "Health check for server igw_nodeports/worker1 conditionally succeeded, "
        "reason: Layer7 check conditionally passed, code: 404, check duration: 0ms",
    }
    events = [*base, answered, on_worker1(state(190, "worker1", "NOLB"))]
    failed = [failure(0.3, rule="lb_no_server", node="<NOSRV>", pod=None, error="http_503")] * 6
    v = validity(events, failed, term)
    assert v.valid, v.reasons
    assert len(v.notes) == 1 and "the LB's own node" in v.notes[0], v.notes
    assert "6 requests found no server" in v.notes[0]
    starved = [*base, on_worker1(check_failed(180, "worker1", "Layer7 timeout")), on_worker1(
        state(190, "worker1", "DOWN"))]  # fmt: skip
    assert not validity(starved, failed, term).valid


def access(protocol: str, path: str | None = "/", request_id: str | None = "r-1") -> dict:
    return {
        "ts_ms": T,
        "source": "envoy",
        "kind": "access_log",
        "path": path,
        "protocol": protocol,
        "request_id": request_id,
    }


def test_a_run_whose_lb_spoke_another_protocol_than_its_scenario_s_is_invalid() -> None:
    h2_lines = [access("HTTP/2"), access("HTTP/2"), access("HTTP/1.1", "/ws")]
    # WebSockets stay HTTP/1.1 to the gateway whatever HAProxy speaks (ws h1), and a
    # codec error with no request (HAProxy's connection cut mid-preface at the DOWN,
    # seen on onebox) is no request of the run's
    codec_error = access("HTTP/1.1", path=None, request_id=None)
    assert validity([*STEADY, *h2_lines, codec_error], [], TERM, "h2").valid
    v = validity(STEADY + h2_lines + [access("HTTP/1.1")], [], TERM, "h2")
    assert not v.valid
    assert v.reasons == [
        "1 gateway access-log lines came over HTTP/1.1 x1, and the scenario has HAProxy "
        "speak h2 to the gateways (HTTP/2): the LB was not configured for the scenario"
    ]
    assert not validity(STEADY + h2_lines, [], TERM, "h1").valid
    # not asked (an unknown scenario), or lines without a protocol: nothing said
    assert validity(STEADY + h2_lines, [], TERM).valid
    assert validity([*STEADY, access("-")], [], TERM, "h2").valid


def test_a_rollout_s_second_node_out_after_its_own_gateway_s_termination_is_the_event_s() -> None:
    rollout = {
        **TERM,
        "pods": [
            {"pod": "gw-worker1", "node": "worker1", "ms": T},
            {"pod": "gw-worker2", "node": "worker2", "ms": T + 30_000},
        ],
    }
    events = [*STEADY, state(20_000, "worker1", "UP"), state(31_000, "worker2", "DOWN")]
    no_server = failure(31.5, "lb_no_server", node=None, pod=None, error="http_503")
    on_second = failure(30.5, node="worker2", pod="gw-worker2")
    assert validity(events, [no_server, on_second], rollout).valid
    # worker2 out before its own gateway's termination is the lab's, and so then is a
    # request with no server
    early = [*STEADY, state(20_000, "worker2", "DOWN")]
    reasons = validity(early, [no_server], rollout).reasons
    assert reasons[0].startswith(
        "worker2 (a terminated gateway's node before its termination) marked DOWN at +20.00 s"
    )
    assert reasons[1].startswith("1 failures were not on the terminating gateway (no server")
