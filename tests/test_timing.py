"""The timing model: the seed's numbers, one refusal per rule, bad inputs named."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, run_app
from runbook.model import timing


def names(overrides: dict[str, object], profile: str = "seed") -> dict[str, str]:
    b = timing.derive(profile, overrides)
    return {v.rule: v.message for v in timing.check(b)}


@pytest.mark.parametrize("profile", list(timing.PROFILES))
def test_both_profiles_pass(profile: str) -> None:
    assert names({}, profile) == {}


def test_seed_profile_is_the_seed() -> None:
    b = timing.derive("seed")
    i = b.inputs
    # seed 000 §2: 300 / 305 / 305 / 150 / 210; seed 003 §5: 120 / 10 / 2
    assert (i["longest_request_s"], b.backend_grace_s, b.vs_timeout_s) == (300, 305, 305)
    assert (i["envoy_drain_s"], b.gateway_grace_s) == (150, 210)
    assert (i["drain_timeout_s"], i["lb_buffer_s"], i["poll_interval_s"]) == (120, 10, 2)
    assert (i["haproxy_inter_s"], i["haproxy_fall"], i["haproxy_rise"]) == (2, 2, 2)
    assert b.backend_shutdown_timeout_s == 300  # the seed's srv.Shutdown(ctx 300s)
    # derived, not in the seed: HAProxy must outlast Envoy's route timeout
    assert b.haproxy_timeout_server_s == 310
    assert b.improved_prestop_worst_s == 142 and b.lb_detect_worst_s == 6


def test_a_rollout_s_worst_time_is_one_step_a_replica() -> None:
    b = timing.derive("seed")
    # an old gateway's grace 210, the next one's start (readiness 2 s x 30) 60 and
    # minReadySeconds 10; two replicas
    assert (b.gateway_start_worst_s, b.rollout_step_worst_s, b.rollout_worst_s) == (60, 280, 560)
    assert b.lb_rise_worst_s == 6
    assert timing.derive("seed", {"gateway_replicas": 3}).rollout_worst_s == 840


def test_quick_profile_keeps_the_relations_at_a_minute_scale() -> None:
    b = timing.derive("quick")
    assert b.gateway_grace_s <= 40 and b.inputs["longest_request_s"] <= 60


# (rule, overrides that break only that rule where possible, numbers the message names)
RULES = [
    ("gateway_grace_exceeds_envoy_drain", {"gateway_grace_s": 150}, ["150s"]),
    (
        "gateway_grace_exceeds_prestop",
        {"lb_buffer_s": 30, "gateway_grace_s": 155},
        ["155s", "162s"],
    ),
    ("poll_ends_before_envoy_is_killed", {"drain_timeout_s": 149}, ["151s", "150s"]),
    (
        "lb_marks_down_before_envoy_is_killed",
        {"drain_timeout_s": 140, "envoy_listener_drain_s": 200},
        ["153s", "150s"],
    ),
    ("listeners_accept_until_lb_down", {"envoy_listener_drain_s": 45}, ["45s", "133s"]),
    ("lb_buffer_exceeds_lb_detection", {"lb_buffer_s": 5}, ["5s", "6s"]),
    ("haproxy_timeout_server_covers_vs_timeout", {"haproxy_timeout_server_s": 50}, ["50s", "305s"]),
    ("vs_timeout_covers_backend_grace", {"vs_timeout_s": 60}, ["60s", "305s"]),
    ("backend_grace_covers_longest_request", {"backend_grace_s": 300}, ["300s", "305s"]),
    ("backend_shutdown_within_grace", {"backend_shutdown_timeout_s": 305}, ["305s"]),
    ("envoy_readiness_has_time_for_xds", {"envoy_readiness_failure_threshold": 5}, ["2s x 5"]),
    # ordered: a 404 seen at the next check (inter 2 + check timeout 2)
    ("nolb_wait_exceeds_soft_detection", {"nolb_wait_s": 4}, ["4s", "4s"]),
    ("drain_timeout_leaves_a_poll_after_nolb_wait", {"nolb_wait_s": 115}, ["120s", "115s"]),
    # istio-native: Istio's default MINIMUM_DRAIN_DURATION against the seed's HAProxy
    ("minimum_drain_covers_lb_detection", {"minimum_drain_s": 5}, ["5s", "6s"]),
    ("minimum_drain_within_termination_drain", {"minimum_drain_s": 150}, ["150s"]),
    # a drain under the gateway's PodDisruptionBudget
    ("pdb_admits_an_eviction", {"gateway_pdb_min_available": 2}, ["minAvailable 2", "2 replicas"]),
    ("pdb_keeps_a_gateway_serving", {"gateway_pdb_min_available": 0}, ["minAvailable 0"]),
    # a rollout: the next old gateway goes only once HAProxy sends to the new one
    # (endpoint sync 2 + rise 2 x inter 2), and each step within the progress deadline
    ("min_ready_covers_lb_rise", {"gateway_min_ready_s": 5}, ["minReadySeconds 5s", "6s"]),
    (
        "rollout_step_within_progress_deadline",
        {"gateway_progress_deadline_s": 250},
        ["280s", "210s", "60s", "250s"],
    ),
]


def test_every_rule_has_a_test() -> None:
    # a rule added to check() without a broken budget here fails this test
    broken_all = {}
    for _, overrides, _ in RULES:
        broken_all.update(names(overrides))
    assert {r for r, _, _ in RULES} == set(broken_all)


@pytest.mark.parametrize(("rule", "overrides", "numbers"), RULES, ids=[r[0] for r in RULES])
def test_rule_refuses_its_broken_budget(
    rule: str, overrides: dict[str, object], numbers: list[str]
) -> None:
    found = names(overrides)
    assert rule in found, found
    for number in numbers:
        assert number in found[rule], found[rule]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"longest_requets_s": 10}, "unknown timing input 'longest_requets_s'"),
        ({"drain_timeout_s": -1}, "drain_timeout_s=-1 must be a finite number >= 0"),
        ({"drain_timeout_s": "120"}, "drain_timeout_s='120' must be a number"),
        ({"drain_timeout_s": True}, "drain_timeout_s=True must be a number"),
        ({"lb_buffer_s": 2.5}, "lb_buffer_s=2.5 must be a whole number"),
        ({"poll_interval_s": 0}, "poll_interval_s=0 must be > 0"),
    ],
)
def test_bad_inputs_are_named(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(timing.TimingInputError, match=named.replace("?", r"\?")):
        timing.derive("seed", overrides)


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(
        timing.TimingInputError, match="'fast' does not exist; choose one of: seed, quick"
    ):
        timing.derive("fast")


def test_protected_per_path() -> None:
    seed = timing.protected_by_path(timing.derive("seed"))
    # the backend path protects the seed's 300 s; a gateway termination at most its
    # drain window (docs/design.md): the improved poll gives up at DRAIN_TIMEOUT 120
    assert seed["backend"]["longest_s"] == 300
    assert seed["gateway_improved"]["longest_s"] == 120
    assert seed["gateway_current"]["longest_s"] == 0
    assert seed["gateway_current"]["survives_if_ends_within_s"] == 2
    # ordered: DRAIN_TIMEOUT 120 - the endpoint sync wait 2 - the /nolb call 5 - the
    # 404's detection 4
    assert seed["gateway_ordered"]["longest_s"] == 109
    assert seed["gateway_istio_native"]["longest_s"] == 0


def test_haproxy_duration_syntax() -> None:
    assert [timing.haproxy_duration(s) for s in (2, 0.5, 310, 1.25)] == [
        "2s",
        "500ms",
        "310s",
        "1250ms",
    ]


def test_the_timing_role_accepts_every_input_the_model_knows() -> None:
    """The role's argument spec lists the overrides Ansible lets through: an input the
    model knows but the spec lacks (nolb_wait_s once) is refused before the model sees
    it, so the two must name the same inputs."""
    spec = yaml.safe_load((ROOT / "roles/timing/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]["timing_overrides"]["options"]
    for profile in timing.PROFILES:
        assert set(options) == {*timing.profile_inputs(profile), *timing.OVERRIDABLE}, profile


def _just_outside(key: str, low: float, high: float) -> list[float]:
    """The values just beyond each edge a reader accepts (below only if the model
    would take it otherwise: > 0, and whole where it must be)."""
    whole = key in timing.WHOLE or high >= 2**31 - 1
    out = [math.floor(high) + 1 if whole else high + 0.001]
    step = 1 if whole else 0.001
    if low - step / 2 > 0 and key not in timing.WHOLE:
        out.append(low / 2)
    return out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (key, value)
        for key, (_, low, high, _) in timing.CONSUMER_LIMITS.items()
        for value in _just_outside(key, low, high)
    ],
)
def test_a_number_its_reader_refuses_is_refused_by_the_model(key: str, value: float) -> None:
    with pytest.raises(timing.TimingInputError, match=f"timing input {key}=.* is outside what"):
        timing.derive("quick", {key: value})


def test_a_derived_number_beyond_its_reader_names_the_inputs() -> None:
    """The issue's case: rendered, a key and certificate made, then HAProxy's "timer
    overflow"; now refused by the model, naming the input."""
    with pytest.raises(timing.TimingInputError) as refused:
        timing.derive("seed", {"longest_request_s": 100_000_000})
    assert str(refused.value) == (
        "backend_shutdown_timeout_s 100000000 (from longest_request_s=100000000) is outside "
        "what the backend's SHUTDOWN_TIMEOUT accepts, 0..86400 s: lower longest_request_s"
    )
    # the largest the backend takes passes, with HAProxy's timers well within theirs
    assert timing.derive("seed", {"longest_request_s": 86_400}).haproxy_timeout_server_s == 86_410


def _haproxy_check(tmp_path: Path, timeout_server: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n"
        f"    timeout server {timeout_server}\n"
        "frontend f\n    bind 127.0.0.1:1\n    default_backend b\n"
        "backend b\n    server s 127.0.0.1:2\n"
    )
    return subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=20
    )


def test_the_haproxy_limit_is_haproxys_own(tmp_path: Path) -> None:
    """The real HAProxy takes the model's largest timer as rendered, and not 1 ms more."""
    _, _, high, _ = timing.CONSUMER_LIMITS["haproxy_timeout_server_s"]
    assert _haproxy_check(tmp_path, timing.haproxy_duration(high)).returncode == 0
    over = _haproxy_check(tmp_path, timing.haproxy_duration(high + 0.001))
    assert over.returncode != 0 and "timer overflow" in over.stderr


@pytest.mark.parametrize(("value", "taken"), [(86_400, True), (86_401, False)])
def test_the_backend_limit_is_the_backends_own(value: int, taken: bool) -> None:
    """The backend refuses a SHUTDOWN_TIMEOUT beyond the model's limit at start-up."""
    _, _, high, _ = timing.CONSUMER_LIMITS["backend_shutdown_timeout_s"]
    assert high == 86_400
    # an address that cannot resolve: a backend that took SHUTDOWN_TIMEOUT stops there
    result = run_app("backend", {"SHUTDOWN_TIMEOUT": str(value), "BIND_HOST": "256.0.0.1"})
    assert result.returncode != 0
    refused = f"backend: SHUTDOWN_TIMEOUT='{value}' must be an integer 0..86400" in result.stderr
    assert refused is not taken, result.stderr[-2000:]
