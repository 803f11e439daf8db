"""summary.json arithmetic on hand-made records and events (exact numbers)."""

from __future__ import annotations

from runbook.analysis.summary import in_flight_at, summarize, verdict

T = 1_000_000.0  # termination, ms


def rec(cls: str, start: float, end: float | None, error: str | None = None) -> dict:
    return {
        "class": cls,
        "start_ms": T + start,
        "end_ms": None if end is None else T + end,
        "error": error,
        # as the join marks it: in flight on the terminating gateway (here, all that were)
        "exposed": start < 0 and (end is None or end > 0),
    }


META = {
    "mode": "current",
    "scenario": "inflight",
    "profile": "quick",
    "termination_ms": T,
    "terminated_pod": "gw-w1",
    "terminated_node": "worker1",
    "long_s": 10,
    "protected_s": 0.0,
    "exceeds_protection": True,
}


def test_in_flight_boundaries() -> None:
    assert in_flight_at(rec("sleep", -1, 1), T)
    assert not in_flight_at(rec("sleep", -2, -1), T)  # ended before
    assert not in_flight_at(rec("sleep", 0, 5), T)  # started at the termination: not before
    assert not in_flight_at(rec("sleep", -5, 0), T)  # ended exactly then
    assert in_flight_at(rec("sleep", -1, None), T)  # never ended


def test_counts_cuts_and_timings() -> None:
    records = [
        rec("sleep", -2000, 8000),
        rec("sleep", -2000, 1100, "5xx"),
        rec("stream", -2000, 1100, "truncated"),
        rec("stream", -2000, 8000),
        rec("short", -3000, -2990),
        rec("short", 500, 510, "refused"),
        rec("short", 600, 610),
    ]
    events = [
        {
            "ts_ms": T - 5000,
            "source": "haproxy",
            "kind": "server_state",
            "server": "worker1",
            "status": "UP",
        },
        {"ts_ms": T + 2, "source": "kubelet", "kind": "prestop_started", "pod": "gw-w1"},
        {
            "ts_ms": T + 1000,
            "source": "haproxy",
            "kind": "server_state",
            "server": "worker2",
            "status": "DOWN",
        },
        {
            "ts_ms": T + 1040,
            "source": "haproxy",
            "kind": "server_state",
            "server": "worker1",
            "status": "DOWN",
        },
        {"ts_ms": T + 3002, "source": "kubelet", "kind": "prestop_finished", "pod": "gw-w1"},
        {"ts_ms": T + 20000, "source": "kubelet", "kind": "pod_terminated", "pod": "gw-w1"},
    ]
    s = summarize(records, events, META)
    assert s["classes"]["sleep"] == {"total": 2, "ok": 1, "failed": 1, "by_error": {"5xx": 1}}
    assert s["classes"]["stream"]["by_error"] == {"truncated": 1}
    assert s["classes"]["short"] == {"total": 3, "ok": 2, "failed": 1, "by_error": {"refused": 1}}
    assert s["in_flight_at_termination"] == 4
    assert s["cut_in_flight"] == 2
    assert s["cut_in_flight_by_error"] == {"5xx": 1, "truncated": 1}
    assert s["failed_total"] == 3
    t = s["timings_s"]
    assert t["termination_to_lb_down"] == 1.04  # worker1's DOWN, not worker2's
    assert t["prestop"] == 3.0
    assert t["termination_to_pod_gone"] == 20.0
    assert t["last_in_flight_end"] == 8.0
    assert t["drain_overhead"] == 12.0
    # hand-made failures carry no cause rule (no accounting ran): the run cannot count
    assert s["valid"] is False
    assert s["invalid_reasons"] == [
        "3 failures have no cause rule (refused x1, 5xx x1, truncated x1)"
    ]
    assert verdict(s) == (
        "current: lost 2 of 4 exposed requests (sleep 1/2, stream 1/2); "
        "not tested: short; 3 failed in all; INVALID RUN: "
        "3 failures have no cause rule (refused x1, 5xx x1, truncated x1)"
    )


def test_no_cut_reads_as_none() -> None:
    s = summarize([rec("sleep", -1000, 5000)], [], {**META, "mode": "improved"})
    assert s["cut_in_flight"] == 0 and s["timings_s"]["termination_to_lb_down"] is None
    assert verdict(s).startswith("improved: lost none of 1 exposed requests (sleep 0/1)")


def test_prestop_on_a_cluster_is_bounded_by_the_drain_script_s_own_steps() -> None:
    """A real kubelet reports a preStop hook only when it fails: on onebox the run saw
    the script's steps and no prestop_started, and the summary said `preStop None`."""

    def step(ms: float, n: str, msg: str, pod: str = "gw-w1") -> dict:
        return {
            "ts_ms": T + ms,
            "source": "prestop",
            "kind": "step",
            "pod": pod,
            "step": n,
            "msg": msg,
        }

    events = [
        step(40, "0", "start"),
        step(45, "0", "start", pod="gw-w2"),  # another pod's hook is not this one's
        step(60, "1", "ok"),
        step(9040, "7", "done"),
    ]
    s = summarize([rec("sleep", -1000, 5000)], events, META)
    assert s["timings_s"]["prestop"] == 9.0
    # kubelet's own view wins where there is one (the local lab)
    kubelet = [
        {"ts_ms": T + 2, "source": "kubelet", "kind": "prestop_started", "pod": "gw-w1"},
        {"ts_ms": T + 9502, "source": "kubelet", "kind": "prestop_finished", "pod": "gw-w1"},
    ]
    assert (
        summarize([rec("sleep", -1000, 5000)], events + kubelet, META)["timings_s"]["prestop"]
        == 9.5
    )


def test_zero_in_flight_is_when_the_gauge_last_fell_to_zero() -> None:
    from runbook.analysis.summary import zero_in_flight

    def gauge(at: float, value: int) -> dict:
        return {
            "ts_ms": T + at,
            "source": "envoy",
            "kind": "active_requests",
            "pod": "gw-w1",
            "value": value,
        }

    events = [gauge(-500, 2), gauge(100, 0), gauge(300, 1), gauge(900, 0), gauge(950, 0)]
    assert zero_in_flight(events, "gw-w1", T) == T + 900  # not the brief zero at 100
    assert zero_in_flight(events[:3], "gw-w1", T) is None  # busy when the polls ended
    assert zero_in_flight(events, "gw-w2", T) is None


def test_offered_and_achieved_rates_and_the_shortfall_warning() -> None:
    from dataclasses import asdict

    from runbook.model.plan import plan

    load = asdict(plan("quick", "ordered", "steady").load)
    # steady: long requests last half the 8 s the ordered path protects (DRAIN_TIMEOUT 12
    # - ENDPOINT_SYNC_WAIT 2 - the /nolb call 1 - the 404's detection 1)
    assert load["long_s"] == 4
    shorts = [rec("short", i * 125.0, i * 125.0 + 5) for i in range(80)]  # 8/s for 10 s
    pooled = [rec("short_pooled", i * 250.0, i * 250.0 + 5) for i in range(40)]  # 4/s
    meta = {**META, "scenario": "steady", "load": load}
    s = summarize(shorts + pooled, [], meta)
    assert s["rates"]["short"]["offered_per_s"] == 8.0
    assert not s["rates"]["short"]["shortfall"]
    assert s["rates"]["short_pooled"]["shortfall"]  # 4/s achieved of 8/s offered
    assert "WARNING achieved rate under offered for short_pooled" in verdict(s)
    assert set(s["exposure"]) == {"sleep", "stream", "ws", "short", "short_pooled"}


def test_losses_beyond_the_protected_window_are_counted_apart() -> None:
    records = [
        rec("sleep", -1000, 500, "5xx") | {"planned_s": 10.0},  # longer than 0 s: beyond
        rec("short", -1, 1, "5xx") | {"planned_s": 0.0},  # within: the order's loss
    ]
    s = summarize(records, [], META)  # current: protects 0 s
    assert s["lost_exposed"] == 2 and s["lost_beyond_protection"] == 1
    assert "1 of them longer than the 0.0s this path protects" in verdict(s)


def test_grpc_calls_are_counted_by_how_they_ended_in_grpc_s_words() -> None:
    calls = [
        rec("grpc_stream", -500, 2000) | {"grpc_status": "OK"},
        rec("grpc_stream", -400, 2100) | {"grpc_status": "OK"},
        rec("grpc_stream", -300, 100, "truncated") | {"grpc_status": "UNAVAILABLE"},
    ]
    s = summarize([*calls, rec("short", -1, 1)], [], {**META, "scenario": "h2"})
    assert s["classes"]["grpc_stream"]["by_grpc_status"] == {"OK": 2, "UNAVAILABLE": 1}
    assert s["classes"]["grpc_stream"]["by_error"] == {"truncated": 1}
    assert "by_grpc_status" not in s["classes"]["short"]
    (failed,) = s["failed"]
    assert failed["grpc_status"] == "UNAVAILABLE"
