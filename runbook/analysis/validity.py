"""Whether a run measured the termination order or the lab itself.

A run is valid when, from the lab's bring-up to the run's end:
- no HAProxy server other than a terminated gateway's node left UP (a starved health
  check on the survivor, say, is the lab's fault, not the order's), nor such a node
  before its gateway's termination;
- no request failed before the termination;
- every failure is the termination's: its cause has a rule, and it was served by the
  node or pod of a gateway the event terminated (a session HAProxy killed on the
  survivor says nothing about the order; a request that found no server left at all
  is the event's only when every server out was the event's).
- HAProxy spoke the scenario's protocol to the gateways (registry.Scenario.lb_protocol):
  every gateway access-log line says so (WebSockets stay HTTP/1.1), else the run tested
  another path than it names.

An invalid run is shown and never counted (runbook.analysis.comparison); each reason is a
sentence naming what happened, to whom, when, and what it cost.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .accounting import victims

#: A server state HAProxy takes a server out of rotation with (`UP 1/2` is still UP).
OUT_STATES = ("DOWN", "NOLB", "MAINT", "DRAIN", "STOPPED")
_CHECK_WHY = re.compile(
    r'reason: ([^,]+(?:, code: \d+)?(?:, info: "[^"]*")?(?:, check duration: \d+ms)?)'
)


@dataclass(frozen=True)
class ServerOut:
    """A server HAProxy took out of rotation that the run did not terminate."""

    server: str
    status: str
    ts_ms: float
    #: the failed check that did it, as HAProxy logged it (`Layer7 timeout, check
    #: duration: 501ms`), when there was one
    why: str | None


@dataclass(frozen=True)
class Validity:
    valid: bool
    reasons: list[str] = field(default_factory=list)
    #: each false DOWN (a server the run did not terminate leaving UP): what the
    #: benchmarks count against how many labs ran at once
    servers_out: list[ServerOut] = field(default_factory=list)
    #: what took a server out that was the termination's all the same (own_node_out)
    notes: list[str] = field(default_factory=list)


def own_node_out(out: ServerOut, lb: str, t_ms: float) -> bool:
    """The LB's own node's server, out after the termination by a check some hc answered
    (a 404 or a 5xx, not a timeout): HAProxy runs on that node, and kube-proxy sends a
    node's own traffic to its NodePort to any ready endpoint, the terminating gateway's
    hc included until it drops the endpoint. The termination did it, in that topology."""
    return out.server == lb and out.ts_ms >= t_ms and "code:" in (out.why or "")


def _offset(ts_ms: float, t_ms: float) -> str:
    return f"{(ts_ms - t_ms) / 1000:+.2f} s"


def servers_out(
    events: list[dict[str, Any]], lb: str, terminated: dict[str, float]
) -> list[ServerOut]:
    """Each time a server other than a terminated gateway's node (`terminated`: node ->
    when the first gateway on it began terminating), or such a node before then, left UP
    after it had first come UP: before that the lab is still starting. Only this run's
    LB (`lb`) counts."""
    ours = [
        e
        for e in sorted(events, key=lambda e: e["ts_ms"])
        if e.get("source") == "haproxy" and e.get("lb") in (None, lb)
    ]
    came_up: set[str] = set()
    out = []
    for e in ours:
        if e.get("kind") != "server_state":
            continue
        server, status = str(e.get("server")), str(e.get("status", ""))
        if status.startswith("UP"):
            came_up.add(server)
            continue
        if server not in came_up or not status.startswith(OUT_STATES):
            continue
        if server in terminated and e["ts_ms"] >= terminated[server]:
            continue  # the termination taking its node out: what the run measures
        checks = [
            c
            for c in ours
            if c.get("kind") == "health_check_log"
            and f"/{server} " in str(c.get("line", ""))
            and any(w in str(c.get("line", "")) for w in ("failed", "conditionally"))
            and c["ts_ms"] <= e["ts_ms"]
        ]
        why = None
        if checks and (m := _CHECK_WHY.search(str(checks[-1]["line"]))):
            why = m.group(1)
        out.append(ServerOut(server, status.split()[0], e["ts_ms"], why))
        came_up.discard(server)  # counted once until it comes UP again
    return out


#: Envoy's %PROTOCOL% for each registry.LB_PROTOCOLS value.
ENVOY_PROTOCOL = {"h1": "HTTP/1.1", "h2": "HTTP/2"}
#: The path whose requests stay HTTP/1.1 to the gateway whatever the LB speaks (`ws h1`).
WEBSOCKET_PATH = "/ws"


def off_protocol(events: list[dict[str, Any]], lb_protocol: str) -> Counter[str]:
    """The gateway access-log lines of the run's requests (WebSockets aside) that came
    over another protocol than `lb_protocol`, by the protocol they came over. A line
    with no request id is no request of ours (seen on onebox at the DOWN: a 400
    http1.codec_error with no method, from HAProxy's address, as HAProxy killed a
    session still connecting to the victim: a connection cut before Envoy read a
    request), and lines without a protocol (artifacts from before Envoy logged it)
    say nothing."""
    want = ENVOY_PROTOCOL[lb_protocol]
    return Counter(
        str(e["protocol"])
        for e in events
        if e.get("source") == "envoy"
        and e.get("kind") == "access_log"
        and e.get("request_id") not in (None, "", "-")
        and e.get("protocol") not in (None, "", "-", want)
        and str(e.get("path", "")).split("?")[0] != WEBSOCKET_PATH
    )


def validity(
    events: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    term: dict[str, Any],
    lb_protocol: str | None = None,
) -> Validity:
    """`failed`: the summary's failed requests (at_s from the termination, rule,
    served_by); `term`: the termination (ms, pod, node, lb, and `pods` when the event
    terminated more than one); `lb_protocol`: what the scenario has HAProxy speak to
    the gateways (None: not checked)."""
    t = term["ms"]
    pods = victims(term)
    terminated: dict[str, float] = {}
    for v in pods:
        terminated.setdefault(v["node"], v["ms"])
    reasons, notes = [], []
    if lb_protocol is not None and (wrong := off_protocol(events, lb_protocol)):
        reasons.append(
            f"{sum(wrong.values())} gateway access-log lines came over {_counts(wrong)}, "
            f"and the scenario has HAProxy speak {lb_protocol} to the gateways "
            f"({ENVOY_PROTOCOL[lb_protocol]}): the LB was not configured for the scenario"
        )
    out_of_rotation = servers_out(events, term["lb"], terminated)
    own = [o for o in out_of_rotation if own_node_out(o, term["lb"], t)]
    for out in own:
        no_server = [
            f for f in failed if f.get("rule") == "lb_no_server" and f.get("at_s") is not None
        ]
        notes.append(
            f"{out.server} (the LB's own node) marked {out.status} at {_offset(out.ts_ms, t)} "
            f"by its check ({out.why}): that check reaches any ready gateway's hc through "
            "kube-proxy, the terminating one's included until kube-proxy drops it; the "
            f"termination did it, in this topology; {len(no_server)} requests found no server"
        )
    for out in (o for o in out_of_rotation if o not in own):
        on_it = [f for f in failed if (f.get("served_by") or {}).get("lb_server") == out.server]
        no_server = [f for f in failed if f.get("rule") == "lb_no_server"]
        by = f" by a failed check ({out.why})" if out.why else ""
        if out.server == term["node"]:
            whose = "the victim's node before its termination"
        elif out.server in terminated:
            whose = "a terminated gateway's node before its termination"
        else:
            whose = "a survivor"
        reasons.append(
            f"{out.server} ({whose}) marked {out.status} at {_offset(out.ts_ms, t)}{by}: the "
            f"lab was unsteady, not the order; {len(on_it)} requests failed on it and "
            f"{len(no_server)} found no server"
        )
    before = [f for f in failed if f.get("at_s") is not None and f["at_s"] < 0]
    if before:
        errors = Counter(str(f.get("error")) for f in before)
        reasons.append(
            f"{len(before)} requests failed before the termination (first at "
            f"{min(f['at_s'] for f in before):+.2f} s; {_counts(errors)})"
        )
    after = [f for f in failed if f not in before]
    unexplained = [f for f in after if f.get("rule") in (None, "unexplained")]
    if unexplained:
        reasons.append(
            f"{len(unexplained)} failures have no cause rule "
            f"({_counts(Counter(str(f.get('error')) for f in unexplained))})"
        )
    # a request that found no server is the termination's when every server out was
    # the event's (its nodes, the LB's own node by its check): none was the lab's
    lab_out = [o for o in out_of_rotation if o not in own]
    elsewhere = [
        f
        for f in after
        if f not in unexplained
        and not _served_by_victim(f.get("served_by") or {}, pods)
        and not (not lab_out and f.get("rule") == "lb_no_server")
    ]
    if elsewhere:
        where = Counter(_node_or_none(f.get("served_by") or {}) for f in elsewhere)
        reasons.append(
            f"{len(elsewhere)} failures were not on the terminating gateway "
            f"({_counts(where)}; {_counts(Counter(str(f.get('rule')) for f in elsewhere))})"
        )
    return Validity(not reasons, reasons, out_of_rotation, notes)


def _node_or_none(served: dict[str, Any]) -> str:
    """The node that served it; HAProxy's `<NOSRV>` and no record alike: no server."""
    node = served.get("node") or served.get("lb_server")
    return "no server" if node in (None, "", "<NOSRV>") else str(node)


def _served_by_victim(served: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    return any(
        served.get("node") == v["node"] or served.get("gateway_pod") == v["pod"] for v in pods
    )


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in c.most_common())
