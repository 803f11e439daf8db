"""The FSM alone: transitions, refusals, history bound, thread safety."""

from __future__ import annotations

import threading

import pytest

from hc.fsm import FSM, HISTORY_SIZE, State, TransitionRefused


def test_probe_table_matches_the_seed() -> None:
    # seed 003 §4: (HAProxy check, readiness, liveness) per state
    expected = {
        State.OPEN: (True, True, True),
        State.DRAINING: (True, True, True),
        State.CLOSING: (False, True, True),
        State.CLOSED: (False, False, True),
        State.FAULT: (False, False, False),
    }
    for state, (lb, ready, live) in expected.items():
        assert (state.lb_healthy, state.ready, state.live) == (lb, ready, live), state
        assert not state.lb_soft_drain, state


def test_nolb_only_turns_the_lb_check_soft() -> None:
    # the ordered mode's state: HAProxy's check neither passes nor fails hard (404),
    # readiness and liveness pass
    assert State.NOLB.lb_soft_drain
    assert (State.NOLB.lb_healthy, State.NOLB.ready, State.NOLB.live) == (False, True, True)


def test_advance_refuses_wrong_state_and_keeps_it() -> None:
    fsm = FSM()
    with pytest.raises(TransitionRefused) as err:
        fsm.advance((State.CLOSING,), State.CLOSED, "test")
    assert err.value.current is State.OPEN
    assert "CLOSED" in str(err.value) and "OPEN" in str(err.value)
    assert fsm.state is State.OPEN


def test_transitions_are_recorded_with_both_clocks_and_notified() -> None:
    seen = []
    fsm = FSM(on_transition=seen.append)
    fsm.advance((State.OPEN,), State.DRAINING, "r1")
    fsm.fail("boom")
    state, _, history = fsm.snapshot()
    assert state is State.FAULT
    assert [(t.from_state, t.to_state, t.reason) for t in history] == [
        (State.OPEN, State.DRAINING, "r1"),
        (State.DRAINING, State.FAULT, "boom"),
    ]
    assert history[0].monotonic <= history[1].monotonic
    assert history[0].wall > 1_600_000_000
    assert seen == history


def test_history_keeps_the_last_hundred() -> None:
    fsm = FSM()
    for i in range(HISTORY_SIZE + 25):
        fsm.fail(f"r{i}")
    _, _, history = fsm.snapshot()
    assert len(history) == HISTORY_SIZE
    assert history[0].reason == "r25" and history[-1].reason == f"r{HISTORY_SIZE + 24}"


def test_concurrent_drains_exactly_one_wins() -> None:
    fsm = FSM()
    barrier = threading.Barrier(32)
    wins: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            fsm.advance((State.OPEN,), State.DRAINING, f"t{i}")
            wins.append(i)
        except TransitionRefused:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert len(fsm.snapshot()[2]) == 1
