"""Ansible filters over the project's model (runbook.model: the timing budget and the
registry of modes and scenarios), the one source of both.

The model is imported from the installed project (`make setup` installs it into
.venv/), so run the venv's ansible-playbook.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from runbook.model import registry, timing
except ImportError as exc:  # pragma: no cover - depends on how Ansible was started
    raise AnsibleFilterError(
        f"the project's model is not importable ({exc}): run `make setup` and use "
        ".venv/bin/ansible-playbook"
    ) from exc


def igw_timing_report(profile: str, overrides: dict | None = None) -> dict:
    """{profile, numbers, violations[{rule, message}], protected} for a profile + overrides."""
    try:
        return timing.report(profile, overrides or {})
    except timing.TimingInputError as exc:
        raise AnsibleFilterError(str(exc)) from None


def igw_haproxy_duration(seconds: float) -> str:
    return timing.haproxy_duration(seconds)


def igw_registry(key: str) -> Any:
    """One part of the registry: `objects` (the Kubernetes objects' names), `ports`,
    `modes`, `mode_files`, `scenarios`, `haproxy_backend`, ..., or `profiles` (the timing
    profiles' names)."""
    data = {**registry.as_dict(), "profiles": list(timing.PROFILES)}
    if key not in data:
        raise AnsibleFilterError(f"igw_registry: {key!r} is not one of: {', '.join(data)}")
    return data[key]


def igw_gateway_active_stat_regex(gateway_port: int) -> str:
    """A regex for the gateway listener's in-flight gauge
    (runbook.model.registry.gateway_active_stat_regex)."""
    return registry.gateway_active_stat_regex(int(gateway_port))


class FilterModule:
    def filters(self) -> dict:
        return {
            "igw_timing_report": igw_timing_report,
            "igw_haproxy_duration": igw_haproxy_duration,
            "igw_registry": igw_registry,
            "igw_gateway_active_stat_regex": igw_gateway_active_stat_regex,
        }
