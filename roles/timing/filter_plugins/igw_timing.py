"""Ansible filters over the project's timing model (lab/timing.py, the one source).

Loaded by path, so any Python that runs Ansible can use it, installed project or not.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ansible.errors import AnsibleFilterError

_MODEL = Path(__file__).resolve().parents[3] / "lab" / "timing.py"


def _model() -> ModuleType:
    name = "igw_timing_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _MODEL)
        if spec is None or spec.loader is None:
            raise AnsibleFilterError(f"timing model not found at {_MODEL}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def igw_timing_report(profile: str, overrides: dict | None = None) -> dict:
    """{profile, numbers, violations[{rule, message}], protected} for a profile + overrides."""
    model = _model()
    try:
        return model.report(profile, overrides or {})
    except model.TimingInputError as exc:
        raise AnsibleFilterError(str(exc)) from None


def igw_haproxy_duration(seconds: float) -> str:
    return _model().haproxy_duration(seconds)


class FilterModule:
    def filters(self) -> dict:
        return {
            "igw_timing_report": igw_timing_report,
            "igw_haproxy_duration": igw_haproxy_duration,
        }
