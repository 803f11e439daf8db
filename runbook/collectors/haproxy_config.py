"""What an HAProxy config says of the experiment's timing (its timeouts, the check's
interval, fall and rise, how long an idle server connection may live) and of where its
connections to the servers leave from. Read from
the config the haproxy role wrote (the local lab's, or a worker's fetched by
playbooks/verify.yml)."""

from __future__ import annotations

import re

from ..model.durations import haproxy_seconds

#: HAProxy purges idle server connections every `pool-purge-delay` (5 s unless set),
#: half of them each time: an idle connection may live about twice that.
HAPROXY_POOL_PURGE_DELAY_S = 5.0


def haproxy_settings(cfg: str) -> dict[str, float]:
    """The timing inputs an HAProxy config carries (first server line, defaults)."""
    out: dict[str, float] = {}
    for key, name in (("server", "haproxy_timeout_server_s"), ("check", "haproxy_check_timeout_s")):
        m = re.search(rf"^\s*timeout {key}\s+(\S+)", cfg, re.M)
        if m:
            out[name] = haproxy_seconds(m.group(1))
    m = re.search(r"^\s*server \S+ \S+ check .*?inter (\S+) fall (\d+) rise (\d+)", cfg, re.M)
    if m:
        out["haproxy_inter_s"] = haproxy_seconds(m.group(1))
        out["haproxy_fall"] = int(m.group(2))
        out["haproxy_rise"] = int(m.group(3))
    m = re.search(r"^\s*pool-purge-delay\s+(\S+)", cfg, re.M)
    out["pool_purge_delay_s"] = haproxy_seconds(m.group(1)) if m else HAPROXY_POOL_PURGE_DELAY_S
    return out


def haproxy_source(cfg: str) -> str | None:
    """The address a `source` line makes HAProxy's server connections leave from
    (the first such line: the role writes one, in the backend), or None."""
    m = re.search(r"^\s*source\s+([^\s:]+)", cfg, re.M)
    return m.group(1) if m else None
