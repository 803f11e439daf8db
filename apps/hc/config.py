"""hc settings from the environment, checked before the server starts."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ADDR = ":18180"
# The preStop hook runs inside the pod's network namespace, so loopback is the only
# source that legitimately changes state; NodePort 30180 exposes hc to anyone who
# reaches a worker (beyond the seed, which let any client POST /fault).
DEFAULT_ADMIN_SOURCES = "127.0.0.0/8,::1/128"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Config:
    host: str | None  # None: every interface, as Go's ":port"
    port: int
    admin_sources: tuple[Network, ...]
    lb_rise: int  # HAProxy `rise`, for the /reopen re-admission warning
    lb_inter_s: float  # HAProxy `inter`

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        host, port = parse_addr(env.get("HC_ADDR", DEFAULT_ADDR))
        return cls(
            host=host,
            port=port,
            admin_sources=parse_sources(env.get("HC_ADMIN_SOURCES", DEFAULT_ADMIN_SOURCES)),
            lb_rise=_positive_int("HC_LB_RISE", env.get("HC_LB_RISE", "2")),
            lb_inter_s=_positive_float("HC_LB_INTER_S", env.get("HC_LB_INTER_S", "2")),
        )

    def admin_allowed(self, remote: str | None) -> bool:
        if not remote:
            return False
        try:
            ip = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.admin_sources)


def parse_addr(value: str) -> tuple[str | None, int]:
    """`:18180`, `127.0.0.1:18180` or `[::1]:18180` -> (host or None, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"HC_ADDR={value!r} is not an address: use ':PORT', 'HOST:PORT' or '[V6]:PORT' "
            "with PORT in 1..65535"
        )
    host = host.strip("[]")
    return (host or None), int(port_text)


def parse_sources(value: str) -> tuple[Network, ...]:
    nets = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"HC_ADMIN_SOURCES item {item!r} is not an address or CIDR ({exc}); "
                "give a comma-separated list such as '127.0.0.0/8,::1/128'"
            ) from None
    if not nets:
        raise ConfigError(
            f"HC_ADMIN_SOURCES={value!r} allows no source: every state change would be refused"
        )
    return tuple(nets)


def _positive_int(name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} must be a whole number >= 1")
    return int(value)


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ConfigError(f"{name}={value!r} must be a number of seconds > 0")
    return number
