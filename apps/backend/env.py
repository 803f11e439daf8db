"""The backend's settings from its environment, for both of its processes (`python -m
backend` and `python -m backend.ticker`): an integer in a range, or an error naming
the variable, its value and what is allowed."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    pass


def env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{name}={raw!r} must be an integer {low}..{high}")
    return int(raw)
