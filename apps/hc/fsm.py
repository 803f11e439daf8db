"""The gateway's termination state machine: which signal fails when.

OPEN -> DRAINING -> CLOSING -> CLOSED, and any -> FAULT. One state answers
differently on each probe path (seed 003 §4): HAProxy's /health_check.html fails
from CLOSING, Kubernetes readiness (/health) only from CLOSED, liveness (/live)
only in FAULT. That asymmetry is the drain window.

Beyond the seed, for the `ordered` mode: OPEN -> NOLB -> CLOSING -> CLOSED. In NOLB
/health_check.html answers 404, which HAProxy's `http-check disable-on-404` turns into
its own NOLB state at the first check: no new requests, established sessions go on.
Readiness and liveness still pass. The seed's rows are unchanged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

#: How many transitions the ring buffer keeps (the seed's 100; a pod makes 4-5).
HISTORY_SIZE = 100


class State(StrEnum):
    OPEN = "OPEN"
    NOLB = "NOLB"
    DRAINING = "DRAINING"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    FAULT = "FAULT"

    @property
    def lb_healthy(self) -> bool:
        """HAProxy's httpchk (/health_check.html) passes: new traffic from the LB."""
        return self in (State.OPEN, State.DRAINING)

    @property
    def lb_soft_drain(self) -> bool:
        """HAProxy's check gets 404: with disable-on-404 the server keeps its sessions
        and gets no new requests (HAProxy's NOLB)."""
        return self is State.NOLB

    @property
    def ready(self) -> bool:
        """Kubernetes readiness (/health) passes: the pod stays an endpoint."""
        return self in (State.OPEN, State.NOLB, State.DRAINING, State.CLOSING)

    @property
    def live(self) -> bool:
        """Liveness (/live) passes: only FAULT asks kubelet for a restart."""
        return self is not State.FAULT


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: State
    to_state: State
    reason: str
    wall: float  # time.time(): comparable with other processes' logs
    monotonic: float  # time.monotonic(): immune to clock steps, for durations

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["from"] = str(d.pop("from_state"))
        d["to"] = str(d.pop("to_state"))
        return d


class TransitionRefused(Exception):
    """A transition asked from a state it does not start from."""

    def __init__(self, current: State, wanted: State, allowed_from: tuple[State, ...]) -> None:
        self.current = current
        self.wanted = wanted
        self.allowed_from = allowed_from
        allowed = ", ".join(allowed_from)
        super().__init__(f"cannot go to {wanted} from {current}; allowed from: {allowed}")


class FSM:
    """Thread-safe: transitions are check-and-set under one lock.

    `on_transition` is called after each transition, outside the lock (the seed's Go
    code logged while holding the write lock and noted the contention; we don't).
    """

    def __init__(self, on_transition: Callable[[Transition], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._state = State.OPEN
        self._since_wall = time.time()
        self._since_mono = time.monotonic()
        self._history: deque[Transition] = deque(maxlen=HISTORY_SIZE)
        self._on_transition = on_transition

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    def advance(self, allowed_from: tuple[State, ...], to: State, reason: str) -> Transition:
        """Move to `to` if the current state is one of `allowed_from`, else refuse."""
        with self._lock:
            if self._state not in allowed_from:
                raise TransitionRefused(self._state, to, allowed_from)
            t = self._record(to, reason)
        self._notify(t)
        return t

    def fail(self, reason: str) -> Transition:
        """Any state -> FAULT (also FAULT -> FAULT: each report is kept)."""
        with self._lock:
            t = self._record(State.FAULT, reason)
        self._notify(t)
        return t

    def snapshot(self) -> tuple[State, float, list[Transition]]:
        """(state, since wall time, transitions oldest first), consistent together."""
        with self._lock:
            return self._state, self._since_wall, list(self._history)

    def _record(self, to: State, reason: str) -> Transition:
        t = Transition(self._state, to, reason, time.time(), time.monotonic())
        self._state = to
        self._since_wall, self._since_mono = t.wall, t.monotonic
        self._history.append(t)
        return t

    def _notify(self, t: Transition) -> None:
        if self._on_transition is not None:
            self._on_transition(t)
