"""The accounting's pure parts, case by case: the join, each cause rule, the phases,
exposure, and the comparison's arithmetic. (The end-to-end runs produce real cases of
the rules against the real HAProxy, Envoy and backend: tests/test_make_experiment_e2e.py,
tests/test_failure_causes.py.)"""

from __future__ import annotations

from datetime import datetime

import pytest

from runbook.analysis.accounting import RULES, Phases, account, expected_hops, explain, phases
from runbook.analysis.summary import off_server, summarize, verdict

T = 1_000_000.0
TERM = {"ms": T, "pod": "gw-w1", "node": "worker1", "lb": "lb1"}


def meta(mode: str, scenario: str, **more: object) -> dict:
    """summarize's inputs for a run of TERM's victim, `more` on top."""
    return {
        "mode": mode,
        "scenario": scenario,
        "profile": "quick",
        "termination_ms": T,
        "terminated_pod": "gw-w1",
        "terminated_node": "worker1",
        "lb": "lb1",
        **more,
    }


def ha(rid: str, srv: str = "worker1", st: str = "200", term: str = "--", **kw: str) -> dict:
    return {
        "ts_ms": T,
        "source": "haproxy",
        "kind": "request_log",
        "lb": "lb1",
        "rid": rid,
        "srv": srv,
        "st": st,
        "term": term,
        "Tc": "0",
        **kw,
    }


def envoy(rid: str, pod: str = "gw-w1", code: int = 200, flags: str = "-") -> dict:
    return {
        "ts_ms": T,
        "source": "envoy",
        "kind": "access_log",
        "pod": pod,
        "request_id": rid,
        "response_code": code,
        "response_flags": flags,
        "upstream_host": "10.0.0.1:8080",
    }


def backend(rid: str, msg: str = "request", status: str = "200") -> dict:
    return {
        "ts_ms": T,
        "source": "backend",
        "kind": "request",
        "pod": "b-1",
        "request_id": rid,
        "msg": msg,
        "status": status,
    }


def rec(rid: str, start: float, end: float | None, error: str | None = None) -> dict:
    return {
        "request_id": rid,
        "class": "sleep",
        "start_ms": T + start,
        "end_ms": None if end is None else T + end,
        "error": error,
    }


@pytest.mark.parametrize(
    ("hops", "rule"),
    [
        ({"haproxy": ha("r", st="502", term="DH")}, "lb_killed_session_at_down"),
        ({"haproxy": ha("r", st="200", term="KD")}, "lb_killed_session"),
        ({"haproxy": ha("r", srv="<NOSRV>", st="503", term="SC")}, "lb_no_server"),
        (
            {
                "haproxy": ha("r", st="502", term="SH"),
                "backend": backend("r", "cancelled_at_shutdown_timeout", "503"),
            },
            "backend_cut_at_shutdown",
        ),
        (
            {"haproxy": ha("r", st="503"), "envoy": envoy("r", code=503, flags="UC")},
            "gateway_upstream_failure",
        ),
        ({"haproxy": ha("r", st="502", term="SH")}, "gateway_closed_connection_before_answering"),
        ({"haproxy": ha("r", st="200", term="SD")}, "gateway_aborted_response"),
        (
            {"haproxy": ha("r", st="200"), "envoy": envoy("r", flags="DC")},
            "gateway_downstream_reset",
        ),
        (
            {
                "haproxy": ha("r", st="101"),
                "envoy": envoy("r", code=101) | {"response_code_details": "on_drain_deadline"},
                "backend": backend("r", "client_disconnected", "499"),
            },
            "gateway_closed_at_drain_deadline",
        ),
        ({"envoy": envoy("r", code=200)}, "lb_cut_forwarded_request_unlogged"),
        ({}, "client_could_not_reach_lb"),
    ],
)
def test_each_rule_names_its_cause(hops: dict, rule: str) -> None:
    name, words = explain(rec("r", -1, 1, "reset"), hops)
    assert name == rule and words


def test_every_rule_is_covered_above() -> None:
    # a rule added without a case of its own fails here
    covered = {
        "lb_killed_session_at_down",
        "lb_killed_session",
        "lb_no_server",
        "backend_cut_at_shutdown",
        "gateway_upstream_failure",
        "gateway_closed_connection_before_answering",
        "gateway_aborted_response",
        "gateway_downstream_reset",
        "gateway_closed_at_drain_deadline",
        "lb_cut_forwarded_request_unlogged",
        "lb_refused_stream_unlogged",  # test_a_refused_stream_with_no_lb_line_is_the_lb_s
        "backend_closed_idle_connection",  # test_a_reset_on_a_connection_the_backend_closed
        "client_could_not_reach_lb",
    }
    assert {name for name, _, _ in RULES} == covered


def test_a_reset_on_a_connection_the_backend_closed_for_idleness_is_the_backend_s() -> None:
    """Envoy's UC with no backend line, and the backend's idle close of the very
    connection Envoy sent it on (its upstream local address) as it did: the backend's
    keep-alive timeout, not the gateway's termination."""
    start = "1970-01-01T00:16:40.000Z"  # T (ms) as Envoy's %START_TIME%
    assert datetime.fromisoformat(start).timestamp() * 1000 == T
    uc = envoy("r", pod="gw-w2", code=503, flags="UC") | {
        "upstream_local": "10.244.2.5:40000",
        "start_time": start,
    }
    close = {
        "ts_ms": T + 3,
        "source": "backend",
        "kind": "idle_close",
        "pod": "b-1",
        "peer": "10.244.2.5:40000",
        "idle_s": "75.1",
    }
    failed = rec("r", 0, 5, "5xx")
    events = [ha("r", srv="worker2", st="503"), uc, close]
    (joined,), _ = account([failed], events, TERM)
    assert joined["rule"] == "backend_closed_idle_connection"
    assert "10.244.2.5:40000, idle 75.1 s" in joined["cause"]
    assert joined["missing_hops"] == []  # the request never reached the backend
    # another connection's close, or the same one's a minute before, explains nothing
    for other in ({**close, "peer": "10.244.2.5:40001"}, {**close, "ts_ms": T - 60_000}):
        (joined,), _ = account([failed], [ha("r", srv="worker2", st="503"), uc, other], TERM)
        assert joined["rule"] == "gateway_upstream_failure"
        assert joined["missing_hops"] == ["backend"]


def test_a_refused_stream_with_no_lb_line_is_the_lb_s() -> None:
    """HAProxy refuses an h2 stream, unlogged, when the reused server connection closed
    before any response: the client's RST_STREAM code tells it from a refused connection."""
    refused = {**rec("r", -1, 1, "refused"), "h2_error": "RST_STREAM REFUSED_STREAM"}
    name, words = explain(refused, {})
    assert name == "lb_refused_stream_unlogged" and "REFUSED_STREAM" in words
    # the same error kind with no RST_STREAM: a connection refused before HAProxy
    assert explain(rec("r", -1, 1, "refused"), {})[0] == "client_could_not_reach_lb"
    # and with HAProxy's line, HAProxy's own word comes first
    assert explain(refused, {"haproxy": ha("r", st="503", srv="<NOSRV>")})[0] == "lb_no_server"
    # a stream HAProxy killed at the DOWN while still connecting: its rule, and what the
    # client was told (seen on the local lab, istio-native, h2)
    name, words = explain(refused, {"haproxy": ha("r", st="-1", term="D-", Tc="-1")})
    assert name == "lb_killed_session_at_down"
    assert words.endswith("RST_STREAM REFUSED_STREAM: unprocessed, safe to send again")


def test_a_grpc_call_s_cause_says_what_its_client_was_told() -> None:
    """The rule is the hops' (a gRPC call is an HTTP/2 stream at every hop); the words
    add the call's status and how far its stream got, once, with any HTTP/2 reset."""
    cut = {
        **rec("r", -1, 1, "truncated"),
        "class": "grpc_stream",
        "grpc_status": "UNAVAILABLE",
        "h2_error": "RST_STREAM CANCEL",
        "chunks": 12,
        "expected_chunks": 40,
    }
    name, words = explain(cut, {"haproxy": ha("r", term="SD")})
    assert name == "gateway_aborted_response"
    assert words.endswith(
        "; the gRPC client got UNAVAILABLE (RST_STREAM CANCEL) after 12 of 40 messages"
    )
    name, words = explain(cut, {"haproxy": ha("r", term="D-")})
    assert name == "lb_killed_session_at_down" and words.count("RST_STREAM") == 1
    name, words = explain(cut, {})
    assert name == "unexplained" and words.endswith("after 12 of 40 messages")
    # HAProxy's kill at the DOWN ends an h2 stream cleanly: no status for gRPC to read
    ended = {
        **cut,
        "grpc_status": "UNKNOWN",
        "h2_error": None,
        "detail": "UNKNOWN: Stream removed (Data frame with END_STREAM flag received)",
    }
    assert explain(ended, {"haproxy": ha("r", term="DD")})[1].endswith(
        "UNKNOWN (the stream ended with END_STREAM and no grpc-status trailer) after 12 of "
        "40 messages"
    )


def test_nothing_known_is_unexplained_with_the_facts() -> None:
    name, words = explain(rec("r", -1, 1, "5xx"), {"haproxy": ha("r", st="500")})
    assert name == "unexplained" and "HAProxy 500 -- via worker1" in words


def test_phases_in_order_and_at_their_boundaries() -> None:
    p = Phases(termination=T, lb_check_failing=T + 100, lb_down=T + 200, pod_gone=T + 900)
    assert [p.of(T + d) for d in (-1, 0, 99, 100, 199, 200, 899, 900)] == [
        "before_termination",
        "drain",
        "drain",
        "lb_detection",
        "lb_detection",
        "after_lb_down",
        "after_lb_down",
        "after_pod_gone",
    ]
    # nothing happened after the termination: all of it is drain
    assert Phases(T, None, None, None).of(T + 10_000) == "drain"


def test_phases_come_from_this_lb_and_this_node() -> None:
    check = "Health check for server igw_nodeports/{} failed, reason: Layer7 wrong status"

    def log(dt: float, lb: str, kind: str, **kw: str) -> dict:
        return {"ts_ms": T + dt, "source": "haproxy", "kind": kind, "lb": lb, **kw}

    events = [
        log(50, "lb2", "health_check_log", line=check.format("worker1")),  # another LB
        log(60, "lb1", "health_check_log", line=check.format("worker2")),  # another node
        log(70, "lb1", "health_check_log", line=check.format("worker1")),
        log(80, "lb1", "server_log", line="Server igw_nodeports/worker1 is DOWN. 1 active"),
        log(95, "lb1", "server_state", server="worker1", status="DOWN"),  # polled: later
        {"ts_ms": T + 500, "source": "kubelet", "kind": "pod_terminated", "pod": "gw-w1"},
    ]
    p = phases(events, T, "gw-w1", "worker1", "lb1")
    assert (p.lb_check_failing, p.lb_down, p.pod_gone) == (T + 70, T + 80, T + 500)


def test_the_lb_s_own_node_server_is_served_wherever_envoy_says() -> None:
    """The homelab's HAProxy runs on worker1: kube-proxy sends worker1's own traffic to
    its NodePort to any ready gateway, so HAProxy's `worker1` says nothing of the node.
    Seen on onebox: the victim on worker2 served requests HAProxy sent to worker1."""
    term = {"ms": T, "pod": "gw-w2", "node": "worker2", "lb": "worker1"}
    slices = [
        {"ts_ms": T - 9000, "source": "endpointslice", "kind": "conditions", "pod": p, "node": n}
        for p, n in (("gw-w1", "worker1"), ("gw-w2", "worker2"))
    ]
    records = [
        rec("a", -500, 1000, "reset"),  # via worker1, served by the victim, cut
        rec("b", -500, 1000),  # via worker1, no Envoy line: where is unknown
        rec("c", -500, 1000),  # via worker2's NodePort: its own gateway alone
        rec("d", -500, 1000),  # via worker1, served on worker1
    ]
    events = [
        *slices,
        ha("a", srv="worker1", st="200", term="SD"), envoy("a", pod="gw-w2", flags="DC"),
        ha("b", srv="worker1"), backend("b"),
        ha("c", srv="worker2"),
        ha("d", srv="worker1"), envoy("d", pod="gw-w1"), backend("d"),
    ]  # fmt: skip
    joined, _ = account(records, [e | {"lb": "worker1"} for e in events], term)
    by_id = {r["request_id"]: r for r in joined}
    assert [by_id[i]["exposed"] for i in "abcd"] == [True, None, True, False]
    assert by_id["a"]["served_by"]["node"] == "worker2"
    assert by_id["a"]["phase"] != "on_other_node"  # the victim's own drain cut it
    assert by_id["b"]["served_by"]["node"] is None
    assert by_id["c"]["served_by"]["node"] == "worker2"
    assert {off_server(r) for r in joined} == {"worker1 -> worker2", None}


def test_expected_hops_follow_what_the_others_say() -> None:
    r = rec("r", -1, 1, "5xx")
    assert expected_hops(r, {}) == ["haproxy", "envoy", "backend"]
    assert expected_hops(r, {"haproxy": ha("r", srv="<NOSRV>", st="503")}) == ["haproxy"]
    assert expected_hops(rec("r", -1, 1, "refused"), {}) == []
    no_upstream = envoy("r", code=503, flags="UH") | {"upstream_host": "-"}
    assert expected_hops(r, {"haproxy": ha("r"), "envoy": no_upstream}) == ["haproxy", "envoy"]


def test_join_exposure_and_missing_hops() -> None:
    records = [
        rec("a", -500, 1000),  # in flight, on the terminating gateway, fine
        rec("b", -500, 1000, "5xx"),  # in flight, terminating gateway, lost
        rec("c", -500, 1000),  # in flight on the other gateway: not exposed
        rec("d", -500, 1000),  # in flight, no line anywhere: where is unknown
        rec("e", 100, 200),  # after the termination, on the other gateway
        rec("f", 100, 200),  # sent to the terminating gateway while it drained: exposed
    ]
    events = [
        ha("a"), envoy("a"), backend("a"),
        ha("b", st="502", term="DH"), envoy("b", flags="DC"), backend("b"),
        ha("c", srv="worker2"), envoy("c", pod="gw-w2"), backend("c"),
        ha("e", srv="worker2"), envoy("e", pod="gw-w2"),
        ha("f"), envoy("f"), backend("f"),
    ]  # fmt: skip
    joined, _ = account(records, events, TERM)
    by_id = {r["request_id"]: r for r in joined}
    assert [by_id[i]["exposed"] for i in "abcdef"] == [True, True, False, None, False, True]
    assert by_id["d"]["missing_hops"] == ["haproxy", "envoy", "backend"]
    assert by_id["e"]["missing_hops"] == ["backend"]
    assert by_id["b"]["rule"] == "lb_killed_session_at_down"
    assert by_id["b"]["served_by"] == {
        "lb_server": "worker1",
        "node": "worker1",
        "gateway_pod": "gw-w1",
        "backend_pod": "b-1",
    }
    s = summarize(
        [r | {"class": "sleep"} for r in joined],
        events,
        meta("improved", "inflight"),
    )
    assert s["exposure"]["sleep"] == {
        "in_flight": 4,
        "exposed": 3,
        "lost": 1,
        "lost_beyond_protection": 0,
        "where_unknown": 1,
        "tested": True,
    }
    assert s["exposure"]["stream"]["tested"] is False
    assert s["missing_hops"] == {"haproxy": 1, "envoy": 1, "backend": 2}
    line = verdict(s)
    assert "lost 1 of 3 exposed requests (sleep 1/3)" in line
    assert "not tested: stream, short" in line


def test_a_request_the_client_sent_twice_on_its_own_is_said() -> None:
    """Go's Transport (vegeta's) re-sends a GET whose reused connection closed before any
    response byte, and reports the last attempt only: HAProxy's two lines show it."""
    records = [rec("a", 100, 200), rec("b", 100, 200)]
    events = [
        ha("a", st="-1", term="SC"), ha("a"), envoy("a"), backend("a"),
        ha("b"), envoy("b"), backend("b"),
    ]  # fmt: skip
    joined, _ = account(records, events, TERM)
    by_id = {r["request_id"]: r for r in joined}
    assert by_id["a"]["resent_by_client"] == 1
    assert "resent_by_client" not in by_id["b"]
    s = summarize(
        [r | {"class": "short_pooled"} for r in joined],
        events,
        meta("ordered", "busy"),
    )
    assert s["resent_by_client"] == {"short_pooled": 1}


def test_a_retried_request_is_one_record_with_both_attempts_accounted() -> None:
    """The first attempt has its own id and hops: served by the victim and cut, its
    retry served by the survivor. One request, exposed (its first attempt was), not
    lost (its retry succeeded), and the verdict says what the retry hid."""
    first = {"request_id": "a", "start_ms": T - 500, "end_ms": T + 1000, "error": "reset"}
    records = [
        rec("a.2", -500, 1500) | {"first_attempt": first, "class": "short"},
        rec("b", 100, 200) | {"class": "short"},
    ]
    events = [
        ha("a", st="-1", term="DH"), envoy("a", flags="DC"),
        ha("a.2", srv="worker2"), envoy("a.2", pod="gw-w2"), backend("a.2"),
        ha("b", srv="worker2"), envoy("b", pod="gw-w2"), backend("b"),
    ]  # fmt: skip
    joined, _ = account(records, events, TERM)
    by_id = {r["request_id"]: r for r in joined}
    retried = by_id["a.2"]
    assert retried["served_by"]["gateway_pod"] == "gw-w2"
    assert retried["first_attempt"]["served_by"]["gateway_pod"] == "gw-w1"
    assert retried["first_attempt"]["rule"] == "lb_killed_session_at_down"
    assert retried["exposed"] is True and by_id["b"]["exposed"] is False
    s = summarize(
        joined,
        events,
        meta(
            "istio-native",
            "steady",
            load={"long_s": 1, "scenario": "steady", "client_retry": "once"},
        ),
    )
    assert s["client_retry"] == {
        "policy": "once",
        "first_attempts_failed": {"short": 1},
        "failed_after_retry": {},
        "first_attempt_causes": {"lb_killed_session_at_down": 1},
    }
    assert s["exposure"]["short"]["lost"] == 0
    assert "client retry once: 1 first attempts failed, 0 after one retry" in verdict(s)


# A rollout terminates the gateways one after another: worker2's (the victim) at +10 s,
# then, once its replacement gw-new runs there, worker1's (the LB's node) at +40 s.
ROLLOUT = {
    "ms": T,
    "pod": "gw-w2",
    "node": "worker2",
    "lb": "lb1",
    "pods": [
        {"pod": "gw-w2", "node": "worker2", "ms": T + 10_000},
        {"pod": "gw-w1", "node": "worker1", "ms": T + 40_000},
    ],
}


def _gone(pod: str, at: float) -> dict:
    return {"ts_ms": T + at, "source": "kubelet", "kind": "pod_terminated", "pod": pod}


def _down(server: str, at: float) -> dict:
    return {
        "ts_ms": T + at,
        "source": "haproxy",
        "kind": "server_state",
        "lb": "lb1",
        "server": server,
        "status": "DOWN",
    }


def test_a_rollout_s_failures_follow_the_phases_of_the_pod_that_served_them() -> None:
    records = [
        rec("early", 1000, 2000),  # before any termination, on the first victim
        rec("first", 11_000, 16_000, "reset"),  # the first victim, after its node's DOWN
        rec("replacement", 41_000, 42_000, "5xx"),  # on worker2's new gateway
        rec("second", 39_000, 41_000, "reset"),  # the second victim, as it terminated
        rec("node_only", 45_000, 46_000, "reset"),  # via worker2, no Envoy line
    ]
    events = [
        _down("worker2", 15_000),
        _gone("gw-w2", 27_000),
        _gone("gw-w1", 57_000),
        ha("early", srv="worker2"), envoy("early", pod="gw-w2"), backend("early"),
        ha("first", srv="worker2", st="502", term="DH"), envoy("first", pod="gw-w2", flags="DC"),
        ha("replacement", srv="worker2", st="503"), envoy("replacement", "gw-new", 503, "UF"),
        ha("second", srv="worker1", st="502", term="SH"),
        envoy("second", pod="gw-w1", flags="DC"),
        ha("node_only", srv="worker2", st="502", term="SH"),
    ]  # fmt: skip
    joined, by_pod = account(records, events, ROLLOUT)
    assert list(by_pod) == ["gw-w2", "gw-w1"]
    assert by_pod["gw-w2"].lb_down == T + 15_000 and by_pod["gw-w1"].lb_down is None
    r = {x["request_id"]: x for x in joined}
    assert [r[i]["exposed_to"] for i in ("early", "first", "replacement", "second")] == [
        None,
        "gw-w2",
        None,
        "gw-w1",
    ]
    assert (r["first"]["phase_of"], r["first"]["phase"]) == ("gw-w2", "after_lb_down")
    assert (r["second"]["phase_of"], r["second"]["phase"]) == ("gw-w1", "drain")
    # served by a gateway the rollout started, not one it terminated
    assert (r["replacement"]["phase_of"], r["replacement"]["phase"]) == (None, "on_other_node")
    # only HAProxy's server known: worker2's last pod terminated by then, the first
    assert (r["node_only"]["phase_of"], r["node_only"]["phase"]) == ("gw-w2", "after_pod_gone")


def test_a_rollout_s_summary_counts_every_terminated_pod_and_its_own_sequence() -> None:
    records = [
        rec("first", 11_000, 16_000, "reset"),
        rec("first_ok", 12_000, 13_000),
        rec("second", 39_000, 41_000, "reset"),
    ]
    events = [
        _down("worker2", 15_000),
        _gone("gw-w2", 27_000),
        _gone("gw-w1", 57_000),
        ha("first", srv="worker2", st="502", term="DH"), envoy("first", pod="gw-w2", flags="DC"),
        ha("first_ok", srv="worker2"), envoy("first_ok", pod="gw-w2"), backend("first_ok"),
        ha("second", srv="worker1", st="502", term="SH"),
        envoy("second", pod="gw-w1", flags="DC"),
    ]  # fmt: skip
    joined, by_pod = account(records, events, ROLLOUT)
    s = summarize(
        [x | {"class": "sleep"} for x in joined],
        events,
        meta(
            "ordered",
            "steady",
            event="rollout",
            terminated_pod="gw-w2",
            terminated_node="worker2",
            terminations=ROLLOUT["pods"],
        ),
        by_pod,
    )
    assert s["terminated_pods"] == ["gw-w2", "gw-w1"]
    assert s["exposure"]["sleep"]["exposed"] == 3 and s["exposure"]["sleep"]["lost"] == 2
    first, second = s["terminations"]
    assert (first["at_s"], first["gone_after_s"], first["exposed"], first["lost"]) == (
        10.0,
        17.0,
        2,
        1,
    )
    assert first["phases_s"]["lb_down"] == 15.0
    assert (second["at_s"], second["gone_after_s"], second["lost"]) == (40.0, 17.0, 1)
    assert s["timings_s"]["event_to_last_pod_gone"] == 57.0
    # worker2 out after its own gateway's termination: the event's, not the lab's
    assert s["valid"], s["invalid_reasons"]
    assert [f["phase_of"] for f in s["failed"]] == ["gw-w2", "gw-w1"]
