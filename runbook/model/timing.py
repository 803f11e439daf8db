"""The timing model: every deadline in the manifests, HAProxy and the drain script, from
a few inputs, with the invariants that keep the longest request from being cut.

Seed 000 §2 derives every number from two axes: (A) the longest in-flight request must
not be cut at any deadline; (B) LB first, endpoints later. The seed kept the numbers by
hand in seven files; here they are derived (`derive`), checked (`check`) and rendered
(the `manifests` and `haproxy` roles, through filter_plugins/igw.py's igw_timing_report).

Stdlib only: Ansible's controller Python, the lab and the tests import it alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

PROFILES: dict[str, dict[str, float]] = {
    # The seed's exact numbers (seed 000 §2-4, seed 003 §5), for the homelab.
    "seed": {
        "longest_request_s": 300,
        "backend_grace_margin_s": 5,
        "envoy_drain_s": 150,
        # Not in the seed (Istio's default drainDuration is 45 s): pilot-agent's own
        # drain_listeners?graceful stops the listeners after --drain-time-s, while the
        # LB may still route here until DOWN (docs/design.md). Rendered as drainDuration.
        "envoy_listener_drain_s": 150,
        "gateway_grace_margin_s": 60,
        "current_prestop_sleep_s": 30,
        "drain_timeout_s": 120,
        "poll_interval_s": 2,
        "lb_buffer_s": 10,
        "curl_max_time_s": 5,
        # ordered: how long after answering 404 the drain waits before touching Envoy;
        # more than HAProxy needs to see it (one inter + the check timeout)
        "nolb_wait_s": 5,
        # ordered: how long the drain waits before its first change (the 404). Until
        # every kube-proxy has dropped the terminating endpoint, a node's own traffic
        # (its cluster-wide chain: an LB on a worker checking its own node) may reach
        # this pod's hc, and a 404 there takes the LB's own node out too (measured on
        # onebox: NOLB at +0.19 s, 6 requests with no server). kube-proxy syncs at most
        # once a second by default (minSyncPeriod 1s); 0 for an LB off the workers.
        "endpoint_sync_s": 2,
        # istio-native: pilot-agent's MINIMUM_DRAIN_DURATION. Istio's default is 5s, under
        # this HAProxy's worst detection of 6s (fall 2 x inter 2 + check timeout 2)
        "minimum_drain_s": 10,
        "haproxy_inter_s": 2,
        "haproxy_fall": 2,
        "haproxy_rise": 2,
        # HAProxy uses `inter` as the check timeout unless `timeout check` is set.
        "haproxy_check_timeout_s": 2,
        "haproxy_timeout_server_margin_s": 5,
        "envoy_readiness_period_s": 2,
        "envoy_readiness_failure_threshold": 30,
        "hc_readiness_period_s": 2,
        "hc_readiness_failure_threshold": 2,
        "hc_liveness_period_s": 10,
        "hc_liveness_failure_threshold": 3,
        # How long the backend keeps an idle keep-alive connection (aiohttp's 75 s, which
        # the backend took), and how long the gateway's Envoy keeps an idle connection to
        # it (a DestinationRule's idleTimeout; Envoy's own default is an hour): the
        # gateway must let go first, or it may send on a connection as the backend
        # closes it (a 503 UC on onebox; docs/modes.md)
        "backend_keepalive_s": 75,
        "gateway_upstream_idle_s": 60,
        "backend_readiness_period_s": 5,
        "backend_readiness_failure_threshold": 3,
        # One gateway per worker (required anti-affinity), and the PodDisruptionBudget's
        # floor: a drain's eviction is admitted while another replica stays ready.
        "gateway_replicas": 2,
        "gateway_pdb_min_available": 1,
        # A rollout's: a new gateway counts as available (and the Deployment deletes the
        # next old one) only this long after it is ready: the time HAProxy takes to
        # send to it again (`lb_rise_worst_s`). And how long the Deployment may go
        # without progress before it reports ProgressDeadlineExceeded (Kubernetes'
        # default 600 s).
        "gateway_min_ready_s": 10,
        "gateway_progress_deadline_s": 600,
    },
    # The same relations, scaled so that one local-lab run takes about a minute.
    "quick": {
        "longest_request_s": 30,
        "backend_grace_margin_s": 2,
        # just over the latest LB DOWN the checker allows (poll end 12.5 + curl 1 +
        # detection 1.5 = 15 s): every run waits this long for pilot-agent to stop Envoy
        "envoy_drain_s": 16,
        "envoy_listener_drain_s": 16,
        "gateway_grace_margin_s": 10,
        "current_prestop_sleep_s": 3,
        "drain_timeout_s": 12,
        "poll_interval_s": 0.5,
        "lb_buffer_s": 2,
        "curl_max_time_s": 1,
        "nolb_wait_s": 1.5,
        "endpoint_sync_s": 2,
        "minimum_drain_s": 3,
        "haproxy_inter_s": 0.5,
        "haproxy_fall": 2,
        "haproxy_rise": 2,
        "haproxy_check_timeout_s": 0.5,
        "haproxy_timeout_server_margin_s": 2,
        "envoy_readiness_period_s": 1,
        "envoy_readiness_failure_threshold": 30,
        "hc_readiness_period_s": 1,
        "hc_readiness_failure_threshold": 2,
        "hc_liveness_period_s": 2,
        "hc_liveness_failure_threshold": 3,
        "backend_keepalive_s": 75,
        "gateway_upstream_idle_s": 60,
        "backend_readiness_period_s": 1,
        "backend_readiness_failure_threshold": 3,
        "gateway_replicas": 2,
        "gateway_pdb_min_available": 1,
        "gateway_min_ready_s": 4,
        "gateway_progress_deadline_s": 600,
    },
}

#: Derived values a user may pin instead (then the checker judges the pinned number).
OVERRIDABLE = (
    "backend_grace_s",
    "vs_timeout_s",
    "gateway_grace_s",
    "haproxy_timeout_server_s",
    "backend_shutdown_timeout_s",
)

#: Inputs that must be whole numbers (Kubernetes fields, counts, the drain script's
#: integer arithmetic).
WHOLE = {
    "longest_request_s",
    "backend_grace_margin_s",
    "envoy_drain_s",
    "envoy_listener_drain_s",
    "gateway_grace_margin_s",
    "current_prestop_sleep_s",
    "drain_timeout_s",
    "lb_buffer_s",
    "curl_max_time_s",
    "haproxy_fall",
    "haproxy_rise",
    "envoy_readiness_period_s",
    "envoy_readiness_failure_threshold",
    "hc_readiness_period_s",
    "hc_readiness_failure_threshold",
    "hc_liveness_period_s",
    "hc_liveness_failure_threshold",
    "backend_readiness_period_s",
    "backend_readiness_failure_threshold",
    "backend_keepalive_s",
    "gateway_upstream_idle_s",
    "gateway_replicas",
    "gateway_pdb_min_available",
    "gateway_min_ready_s",
    "gateway_progress_deadline_s",
    *OVERRIDABLE,
}


#: Inputs that may be 0 (margins, the current mode's sleep); every other must be > 0.
MAY_BE_ZERO = {
    "endpoint_sync_s",
    "backend_grace_margin_s",
    "gateway_grace_margin_s",
    "current_prestop_sleep_s",
    "haproxy_timeout_server_margin_s",
    # a legal PodDisruptionBudget; the rule pdb_keeps_a_gateway_serving names what it does
    "gateway_pdb_min_available",
    # Kubernetes' default; the rule min_ready_covers_lb_rise names what it costs
    "gateway_min_ready_s",
}


#: What graceful-drain.sh accepts (it refuses anything else before sending a request):
#: model input -> (the script's variable, lowest, highest). An input outside is refused
#: here too, so a rendered preStop never carries a value its script would refuse.
DRAIN_SCRIPT_LIMITS: dict[str, tuple[str, float, float]] = {
    # at least 3: with CURL_MAX_TIME at least 1, the script's two first curls could use
    # up any less (it refuses DRAIN_TIMEOUT <= 2 x CURL_MAX_TIME, + ENDPOINT_SYNC_WAIT and
    # NOLB_WAIT in lb-first)
    "drain_timeout_s": ("DRAIN_TIMEOUT", 3, 3600),
    "poll_interval_s": ("POLL_INTERVAL", 0.1, 60),
    "lb_buffer_s": ("LB_BUFFER", 0, 600),
    "curl_max_time_s": ("CURL_MAX_TIME", 1, 60),
    "nolb_wait_s": ("NOLB_WAIT", 0.1, 600),
    "endpoint_sync_s": ("ENDPOINT_SYNC_WAIT", 0, 600),
}


#: HAProxy's largest timer: 2^31 - 1 ms (beyond it: "timer overflow"). Its times are
#: rendered in milliseconds, so under 1 ms would be 0.
HAPROXY_TIMER_S = (0.001, (2**31 - 1) / 1000, "s")
#: Kubernetes' int32 fields: probe periods (seconds) and failure thresholds.
KUBERNETES_PERIOD_S = (1, 2**31 - 1, "s")
KUBERNETES_COUNT = (1, 2**31 - 1, "")

#: What the programs that read a number accept (the model refuses the rest before
#: anything is rendered or started): a Budget field or input -> (who reads it, as what;
#: lowest; highest; unit). Derived fields come first, in DERIVED_FROM.
CONSUMER_LIMITS: dict[str, tuple[str, float, float, str]] = {
    # apps/backend/__main__.py reads SHUTDOWN_TIMEOUT as whole seconds 0..86400 and
    # refuses to start beyond: its pods would crash-loop
    "backend_shutdown_timeout_s": ("the backend's SHUTDOWN_TIMEOUT", 0, 86_400, "s"),
    # the same for KEEPALIVE_TIMEOUT; at least 1 s, the idle sweep's resolution
    "backend_keepalive_s": ("the backend's KEEPALIVE_TIMEOUT", 1, 86_400, "s"),
    # a DestinationRule's connectionPool.http.idleTimeout, rendered as whole seconds
    "gateway_upstream_idle_s": (
        "the backend DestinationRule's idleTimeout",
        1,
        2**31 - 1,
        "s",
    ),
    "haproxy_timeout_server_s": (
        "HAProxy's `timeout server`, `client` and `tunnel`",
        *HAPROXY_TIMER_S,
    ),
    "haproxy_inter_s": ("HAProxy's check `inter`", *HAPROXY_TIMER_S),
    "haproxy_check_timeout_s": ("HAProxy's `timeout check`", *HAPROXY_TIMER_S),
    "envoy_readiness_period_s": ("istio-proxy's readiness periodSeconds", *KUBERNETES_PERIOD_S),
    "envoy_readiness_failure_threshold": (
        "istio-proxy's readiness failureThreshold",
        *KUBERNETES_COUNT,
    ),
    "hc_readiness_period_s": ("hc's readiness periodSeconds", *KUBERNETES_PERIOD_S),
    "hc_readiness_failure_threshold": ("hc's readiness failureThreshold", *KUBERNETES_COUNT),
    "hc_liveness_period_s": ("hc's liveness periodSeconds", *KUBERNETES_PERIOD_S),
    "hc_liveness_failure_threshold": ("hc's liveness failureThreshold", *KUBERNETES_COUNT),
    "backend_readiness_period_s": (
        "the backend's readiness periodSeconds",
        *KUBERNETES_PERIOD_S,
    ),
    "backend_readiness_failure_threshold": (
        "the backend's readiness failureThreshold",
        *KUBERNETES_COUNT,
    ),
    "gateway_replicas": ("the gateway Deployment's replicas", *KUBERNETES_COUNT),
    "gateway_pdb_min_available": ("a PodDisruptionBudget's minAvailable", 0, 2**31 - 1, ""),
    "gateway_min_ready_s": ("the gateway Deployment's minReadySeconds", 0, 2**31 - 1, "s"),
    "gateway_progress_deadline_s": (
        "the gateway Deployment's progressDeadlineSeconds",
        *KUBERNETES_PERIOD_S,
    ),
}

#: The inputs a derived field comes from when it is not pinned (named in the refusal).
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "backend_shutdown_timeout_s": ("longest_request_s",),
    "haproxy_timeout_server_s": (
        "longest_request_s",
        "backend_grace_margin_s",
        "backend_grace_s",
        "vs_timeout_s",
        "haproxy_timeout_server_margin_s",
    ),
}


class TimingInputError(ValueError):
    """An input that is unknown, missing, or not a number of the right kind."""


@dataclass(frozen=True, slots=True)
class Budget:
    """Inputs and derived deadlines, all in seconds unless named otherwise."""

    profile: str
    inputs: dict[str, float]
    backend_grace_s: float
    vs_timeout_s: float
    backend_shutdown_timeout_s: float
    haproxy_timeout_server_s: float
    current_prestop_worst_s: float
    improved_prestop_worst_s: float
    prestop_worst_s: float
    gateway_grace_s: float
    lb_detect_worst_s: float
    lb_detect_best_s: float
    lb_soft_detect_worst_s: float
    poll_end_worst_s: float
    lb_rise_worst_s: float
    gateway_start_worst_s: float
    rollout_step_worst_s: float
    rollout_worst_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    message: str


def profile_inputs(name: str) -> dict[str, float]:
    if name not in PROFILES:
        raise TimingInputError(
            f"timing profile {name!r} does not exist; choose one of: {', '.join(PROFILES)}"
        )
    return dict(PROFILES[name])


def derive(profile: str, overrides: Mapping[str, object] | None = None) -> Budget:
    """The profile's inputs, with `overrides` on top, and every derived deadline."""
    inputs: dict[str, float] = profile_inputs(profile)
    pinned: dict[str, float] = {}
    for key, value in (overrides or {}).items():
        if key not in inputs and key not in OVERRIDABLE:
            known = ", ".join(sorted([*inputs, *OVERRIDABLE]))
            raise TimingInputError(f"unknown timing input {key!r}; known inputs: {known}")
        number = _number(key, value)
        (pinned if key in OVERRIDABLE else inputs)[key] = number
    for key, value in inputs.items():
        _number(key, value)
    i = inputs

    backend_grace = pinned.get(
        "backend_grace_s", i["longest_request_s"] + i["backend_grace_margin_s"]
    )
    # Envoy must not answer 504 before the backend has had its whole grace (seed Q1).
    vs_timeout = pinned.get("vs_timeout_s", backend_grace)
    # The backend lets in-flight requests run this long after SIGTERM.
    shutdown_timeout = pinned.get("backend_shutdown_timeout_s", i["longest_request_s"])
    # Debian's default `timeout server 50000` would 504 long requests (docs/design.md).
    haproxy_timeout_server = pinned.get(
        "haproxy_timeout_server_s", vs_timeout + i["haproxy_timeout_server_margin_s"]
    )
    current_prestop = 2 * i["curl_max_time_s"] + i["current_prestop_sleep_s"]
    # graceful-drain.sh's deadline counts from its start, so steps 1-2 are inside it;
    # the last poll may overrun by one interval, then close-lb and close each take a curl.
    poll_end = i["drain_timeout_s"] + i["poll_interval_s"]
    improved_prestop = poll_end + i["lb_buffer_s"] + 2 * i["curl_max_time_s"]
    prestop_worst = max(current_prestop, improved_prestop)
    # Containers stop in parallel: the critical path is a max, not a sum (seed 000 §2).
    gateway_grace = pinned.get(
        "gateway_grace_s",
        math.ceil(max(i["envoy_drain_s"], prestop_worst) + i["gateway_grace_margin_s"]),
    )
    lb_detect_worst = i["haproxy_fall"] * i["haproxy_inter_s"] + i["haproxy_check_timeout_s"]
    lb_detect_best = (i["haproxy_fall"] - 1) * i["haproxy_inter_s"]
    # disable-on-404 acts on the first 404 (a conditional pass, no `fall` count; checked
    # against HAProxy 2.6): at worst the next check, an interval away, plus its timeout
    lb_soft_detect_worst = i["haproxy_inter_s"] + i["haproxy_check_timeout_s"]
    # A ready gateway's node back in HAProxy's rotation: kube-proxy adds the endpoint
    # to its node's NodePort (Local policy) within a sync, then `rise` passing checks,
    # the first up to an interval away.
    lb_rise_worst = i["endpoint_sync_s"] + i["haproxy_rise"] * i["haproxy_inter_s"]
    # A new gateway ready at worst when istio-proxy's readiness gives up (the time the
    # seed allows for the first xDS push).
    start_worst = i["envoy_readiness_period_s"] * i["envoy_readiness_failure_threshold"]
    # A rollout (maxSurge 1, maxUnavailable 0, one gateway a node and one free seat):
    # each new pod waits for an old one's node, so its steps run one after another,
    # each an old pod's termination (at most its grace), then the next new pod's start
    # and minReadySeconds; the first new pod takes the free seat at once, and the last
    # old pod terminates after the Deployment is done. The whole: one step a replica.
    rollout_step = gateway_grace + start_worst + i["gateway_min_ready_s"]
    rollout_worst = i["gateway_replicas"] * rollout_step
    budget = Budget(
        profile=profile,
        inputs=i,
        backend_grace_s=backend_grace,
        vs_timeout_s=vs_timeout,
        backend_shutdown_timeout_s=shutdown_timeout,
        haproxy_timeout_server_s=haproxy_timeout_server,
        current_prestop_worst_s=current_prestop,
        improved_prestop_worst_s=improved_prestop,
        prestop_worst_s=prestop_worst,
        gateway_grace_s=gateway_grace,
        lb_detect_worst_s=lb_detect_worst,
        lb_detect_best_s=lb_detect_best,
        lb_soft_detect_worst_s=lb_soft_detect_worst,
        poll_end_worst_s=poll_end,
        lb_rise_worst_s=lb_rise_worst,
        gateway_start_worst_s=start_worst,
        rollout_step_worst_s=rollout_step,
        rollout_worst_s=rollout_worst,
    )
    _within_consumers(budget, pinned)
    return budget


def _within_consumers(b: Budget, pinned: Mapping[str, float]) -> None:
    """Refuse a number its reader would refuse, naming the inputs it comes from, before
    anything is written (HAProxy's "timer overflow", a backend that will not start)."""
    for key, (reader, low, high, unit) in CONSUMER_LIMITS.items():
        value = b.inputs[key] if key in b.inputs else getattr(b, key)
        if low <= value <= high:
            continue
        if key in b.inputs or key in pinned:
            names = [key]
            what = f"timing input {key}={_plain(value)}"
        else:
            given = {**b.inputs, **pinned}
            names = [k for k in DERIVED_FROM[key] if k in given]
            sources = ", ".join(f"{k}={_plain(given[k])}" for k in names)
            what = f"{key} {_plain(value)} (from {sources})"
        verb = "lower" if value > high else "raise"
        raise TimingInputError(
            f"{what} is outside what {reader} accepts, {_plain(low)}..{_plain(high)}"
            f"{' ' + unit if unit else ''}: {verb} {' or '.join(names)}"
        )


def _plain(x: float) -> str:
    """A number as a person writes it: 86400, 0.5, 2147483.647 (no exponent)."""
    return str(int(x)) if x == int(x) else f"{x:.6f}".rstrip("0").rstrip(".")


def check(b: Budget) -> list[Violation]:
    """Every invariant, each a named rule whose message names the numbers and the fix."""
    i = b.inputs
    out: list[Violation] = []

    def rule(name: str, ok: bool, message: str) -> None:
        if not ok:
            out.append(Violation(name, message))

    rule(
        "gateway_grace_exceeds_envoy_drain",
        b.gateway_grace_s > i["envoy_drain_s"],
        f"gateway terminationGracePeriodSeconds {b.gateway_grace_s:g}s must exceed Envoy's "
        f"terminationDrainDuration {i['envoy_drain_s']:g}s, or kubelet SIGKILLs the gateway "
        "mid-drain; raise gateway_grace_margin_s (or unpin gateway_grace_s) or lower envoy_drain_s",
    )
    rule(
        "gateway_grace_exceeds_prestop",
        b.gateway_grace_s > b.prestop_worst_s,
        f"gateway terminationGracePeriodSeconds {b.gateway_grace_s:g}s must exceed the preStop "
        f"worst case {b.prestop_worst_s:g}s (improved: DRAIN_TIMEOUT {i['drain_timeout_s']:g} + "
        f"POLL_INTERVAL {i['poll_interval_s']:g} + LB_BUFFER {i['lb_buffer_s']:g} + 2 x curl "
        f"{i['curl_max_time_s']:g}; current: 2 x curl + sleep {i['current_prestop_sleep_s']:g}); "
        "raise the grace or shorten drain_timeout_s / lb_buffer_s",
    )
    rule(
        "poll_ends_before_envoy_is_killed",
        b.poll_end_worst_s < i["envoy_drain_s"],
        f"the drain poll may run to {b.poll_end_worst_s:g}s (DRAIN_TIMEOUT "
        f"{i['drain_timeout_s']:g} + POLL_INTERVAL {i['poll_interval_s']:g}) but pilot-agent "
        f"kills Envoy at terminationDrainDuration {i['envoy_drain_s']:g}s: lower "
        "drain_timeout_s or raise envoy_drain_s",
    )
    lb_down_by = b.poll_end_worst_s + i["curl_max_time_s"] + b.lb_detect_worst_s
    rule(
        "lb_marks_down_before_envoy_is_killed",
        lb_down_by < i["envoy_drain_s"],
        f"HAProxy may see the node DOWN only at {lb_down_by:g}s (poll end "
        f"{b.poll_end_worst_s:g} + curl {i['curl_max_time_s']:g} + detection "
        f"{b.lb_detect_worst_s:g}) but Envoy is killed at {i['envoy_drain_s']:g}s: new "
        "requests would reach a dead gateway; lower drain_timeout_s or raise envoy_drain_s",
    )
    rule(
        "listeners_accept_until_lb_down",
        i["envoy_listener_drain_s"] >= lb_down_by,
        f"Envoy's listeners stop accepting {i['envoy_listener_drain_s']:g}s after the drain "
        f"starts (drainDuration / --drain-time-s) but HAProxy may route here until "
        f"{lb_down_by:g}s: new connections would be refused; raise envoy_listener_drain_s",
    )
    rule(
        "lb_buffer_exceeds_lb_detection",
        i["lb_buffer_s"] > b.lb_detect_worst_s,
        f"LB_BUFFER {i['lb_buffer_s']:g}s must exceed HAProxy's worst detection time "
        f"{b.lb_detect_worst_s:g}s (fall {i['haproxy_fall']:g} x inter "
        f"{i['haproxy_inter_s']:g}s + check timeout {i['haproxy_check_timeout_s']:g}s), or "
        "readiness fails while HAProxy still sends traffic; raise lb_buffer_s or check faster",
    )
    rule(
        "nolb_wait_exceeds_soft_detection",
        i["nolb_wait_s"] > b.lb_soft_detect_worst_s,
        f"ordered: NOLB_WAIT {i['nolb_wait_s']:g}s must exceed the time HAProxy may take to "
        f"see the 404 ({b.lb_soft_detect_worst_s:g}s: inter {i['haproxy_inter_s']:g}s + check "
        f"timeout {i['haproxy_check_timeout_s']:g}s), or Envoy starts draining while new "
        "requests still arrive; raise nolb_wait_s",
    )
    rule(
        "drain_timeout_leaves_a_poll_after_nolb_wait",
        i["drain_timeout_s"] > i["endpoint_sync_s"] + i["nolb_wait_s"] + 2 * i["curl_max_time_s"],
        f"ordered: DRAIN_TIMEOUT {i['drain_timeout_s']:g}s counts from the preStop's start "
        f"and must exceed ENDPOINT_SYNC_WAIT {i['endpoint_sync_s']:g}s + NOLB_WAIT "
        f"{i['nolb_wait_s']:g}s + 2 x curl {i['curl_max_time_s']:g}s, or the poll for zero "
        "never runs; raise drain_timeout_s",
    )
    rule(
        "minimum_drain_covers_lb_detection",
        i["minimum_drain_s"] > b.lb_detect_worst_s,
        f"istio-native: MINIMUM_DRAIN_DURATION {i['minimum_drain_s']:g}s must exceed "
        f"HAProxy's worst detection {b.lb_detect_worst_s:g}s, or pilot-agent may stop Envoy "
        "at zero connections while HAProxy still sends new ones; raise minimum_drain_s",
    )
    rule(
        "minimum_drain_within_termination_drain",
        i["minimum_drain_s"] < i["envoy_drain_s"],
        f"istio-native: MINIMUM_DRAIN_DURATION {i['minimum_drain_s']:g}s must be below "
        f"terminationDrainDuration {i['envoy_drain_s']:g}s; lower minimum_drain_s",
    )
    rule(
        "haproxy_timeout_server_covers_vs_timeout",
        b.haproxy_timeout_server_s >= b.vs_timeout_s,
        f"HAProxy timeout server {b.haproxy_timeout_server_s:g}s is shorter than the "
        f"VirtualService timeout {b.vs_timeout_s:g}s: HAProxy would 504 first; raise "
        "haproxy_timeout_server_s (Debian's default is 50s)",
    )
    rule(
        "vs_timeout_covers_backend_grace",
        b.vs_timeout_s >= b.backend_grace_s,
        f"VirtualService timeout {b.vs_timeout_s:g}s is shorter than the backend's "
        f"terminationGracePeriodSeconds {b.backend_grace_s:g}s: Envoy would 504 a request the "
        "backend is still allowed to finish; set vs_timeout_s >= backend_grace_s",
    )
    needed = i["longest_request_s"] + i["backend_grace_margin_s"]
    rule(
        "backend_grace_covers_longest_request",
        b.backend_grace_s >= needed,
        f"backend terminationGracePeriodSeconds {b.backend_grace_s:g}s is below the longest "
        f"request {i['longest_request_s']:g}s + margin {i['backend_grace_margin_s']:g}s = "
        f"{needed:g}s: kubelet would SIGKILL it mid-request",
    )
    rule(
        "backend_shutdown_within_grace",
        i["longest_request_s"] <= b.backend_shutdown_timeout_s < b.backend_grace_s,
        f"backend SHUTDOWN_TIMEOUT {b.backend_shutdown_timeout_s:g}s must be at least the "
        f"longest request {i['longest_request_s']:g}s and below its grace "
        f"{b.backend_grace_s:g}s, so requests finish and the process exits before SIGKILL",
    )
    rule(
        "gateway_lets_idle_backend_connections_go_first",
        i["gateway_upstream_idle_s"] < i["backend_keepalive_s"],
        f"the gateway keeps an idle connection to the backend {i['gateway_upstream_idle_s']:g}s "
        f"and the backend closes one after {i['backend_keepalive_s']:g}s: Envoy may send a "
        "request on a connection as the backend closes it (503 UC, no backend line); set "
        "gateway_upstream_idle_s below backend_keepalive_s",
    )
    replicas, floor = i["gateway_replicas"], i["gateway_pdb_min_available"]
    rule(
        "pdb_admits_an_eviction",
        floor < replicas,
        f"the gateway's PodDisruptionBudget minAvailable {floor:g} must be below its "
        f"{replicas:g} replicas, or the Eviction API refuses every eviction (429) and a node "
        "drain waits forever; lower gateway_pdb_min_available or raise gateway_replicas",
    )
    rule(
        "pdb_keeps_a_gateway_serving",
        floor >= 1,
        f"the gateway's PodDisruptionBudget minAvailable {floor:g} lets a drain evict every "
        "gateway at once, leaving HAProxy no server; keep gateway_pdb_min_available at 1 or more",
    )
    rule(
        "min_ready_covers_lb_rise",
        i["gateway_min_ready_s"] >= b.lb_rise_worst_s,
        f"the gateway's minReadySeconds {i['gateway_min_ready_s']:g}s is below the "
        f"{b.lb_rise_worst_s:g}s HAProxy may take to send to a new gateway (endpoint sync "
        f"{i['endpoint_sync_s']:g}s + rise {i['haproxy_rise']:g} x inter "
        f"{i['haproxy_inter_s']:g}s): a rollout would start the next old gateway's "
        "termination while HAProxy still has the new one's node out; raise "
        "gateway_min_ready_s",
    )
    rule(
        "rollout_step_within_progress_deadline",
        b.rollout_step_worst_s < i["gateway_progress_deadline_s"],
        f"a rollout step may take {b.rollout_step_worst_s:g}s (an old gateway's grace "
        f"{b.gateway_grace_s:g}s, then the next one's start {b.gateway_start_worst_s:g}s "
        f"and minReadySeconds {i['gateway_min_ready_s']:g}s) but the Deployment reports "
        f"ProgressDeadlineExceeded after {i['gateway_progress_deadline_s']:g}s without "
        "progress, and `kubectl rollout status` fails mid-rollout; raise "
        "gateway_progress_deadline_s or shorten the grace",
    )
    rule(
        "envoy_readiness_has_time_for_xds",
        i["envoy_readiness_period_s"] * i["envoy_readiness_failure_threshold"] >= 30,
        f"istio-proxy readiness gives up after {i['envoy_readiness_period_s']:g}s x "
        f"{i['envoy_readiness_failure_threshold']:g}; the seed allows 60s for the first xDS "
        "push, keep at least 30s",
    )
    return out


def protected_by_path(b: Budget) -> dict[str, dict[str, object]]:
    """The longest request each termination path can carry through, and why."""
    i = b.inputs
    return {
        "backend": {
            "longest_s": min(b.backend_shutdown_timeout_s, b.vs_timeout_s),
            "why": "the backend finishes in-flight requests for SHUTDOWN_TIMEOUT within its grace",
        },
        "gateway_current": {
            "longest_s": 0,
            "survives_if_ends_within_s": b.lb_detect_best_s,
            "why": "the LB check fails at once; shutdown-sessions resets what is in flight "
            "after fall x inter",
        },
        "gateway_improved": {
            "longest_s": min(i["drain_timeout_s"], i["envoy_drain_s"]),
            "why": "the poll waits for zero only until DRAIN_TIMEOUT, then the LB DOWN with "
            "shutdown-sessions cuts what is left; pilot-agent kills Envoy at "
            "terminationDrainDuration whatever the backend's grace (docs/design.md)",
        },
        "gateway_ordered": {
            # a request may still arrive until HAProxy sees the 404 (after the endpoint
            # sync wait and the /nolb call); it must end before DRAIN_TIMEOUT, counted
            # from the preStop's start
            "longest_s": min(
                i["drain_timeout_s"]
                - i["endpoint_sync_s"]
                - i["curl_max_time_s"]
                - b.lb_soft_detect_worst_s,
                i["envoy_drain_s"],
            ),
            "why": "new LB traffic stops first (404, NOLB); the poll then waits for zero "
            "until DRAIN_TIMEOUT, counted from the preStop's start; what is still in "
            "flight then is cut by the DOWN",
        },
        "gateway_istio_native": {
            "longest_s": 0,
            "survives_if_ends_within_s": b.lb_detect_best_s,
            "why": "pilot-agent's readiness fails at SIGTERM; HAProxy marks the node DOWN "
            "after fall x inter and shutdown-sessions resets what is in flight",
        },
    }


def haproxy_duration(seconds: float) -> str:
    """HAProxy's time syntax: `2s` for whole seconds, `500ms` otherwise."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def report(profile: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """Everything Ansible and the lab need: numbers, violations, protected durations."""
    b = derive(profile, overrides)
    return {
        "numbers": {
            **b.inputs,
            **{
                f.name: getattr(b, f.name) for f in fields(b) if f.name not in ("profile", "inputs")
            },
        },
        "profile": profile,
        "violations": [asdict(v) for v in check(b)],
        "protected": protected_by_path(b),
    }


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TimingInputError(f"timing input {key}={value!r} must be a number")
    if not math.isfinite(value) or value < 0:
        raise TimingInputError(f"timing input {key}={value!r} must be a finite number >= 0")
    if value == 0 and key not in MAY_BE_ZERO:
        raise TimingInputError(f"timing input {key}={value!r} must be > 0")
    if key in WHOLE and value != int(value):
        raise TimingInputError(f"timing input {key}={value!r} must be a whole number")
    if key in DRAIN_SCRIPT_LIMITS:
        var, low, high = DRAIN_SCRIPT_LIMITS[key]
        if not low <= value <= high:
            raise TimingInputError(
                f"timing input {key}={value!r} must be {low:g}..{high:g} "
                f"(graceful-drain.sh's {var} accepts no other)"
            )
    return value
