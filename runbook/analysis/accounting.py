"""Every request accounted for: its hops joined by request id, where it was served, the
cause and phase of each failure, and who was exposed to the termination.

- The join: the load driver's record (what the client saw) with HAProxy's per-request
  log line (server, status, termination state, timers), the gateway Envoy's access log
  (pod, response code and flags, upstream) and the backend's line (pod, status).
- A failed request's `cause` comes from the first named rule (`RULES`) whose facts hold;
  none holding is `unexplained`, with what is known. A hop that should have logged and
  did not is listed in `missing_hops`: unknown is never taken for success.
- Its `phase` places the failure in the termination sequence: before the termination,
  drain (the LB check still passes), LB detection (the check fails, the server is still
  UP), after LB DOWN, after the pod is gone. The failure's time is the client's; the
  boundaries are stamped by the collectors as the lines arrive (HAProxy's syslog within
  milliseconds, its runtime API within 0.1 s), so a failure caused by an event can
  land a few milliseconds before it: read `at_s` beside `phases_s`.
- An event may terminate more than one gateway pod (a rollout replaces each in turn):
  each has its own termination time and phases (`victims`), and a failure's phase is
  that of the pod that served it.
- Exposure: a request served by a terminating gateway and in flight at some moment
  between that pod's termination and its end: in flight when it began, or sent to it
  while it drained (the steady scenario's point). Only those tested the order; a class
  with none exposed is "not tested" in that run. A request longer than the mode's path
  can carry (the timing model's protected window) is `beyond_protection`: its loss is
  the deadline's, reported apart from the order's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Record = dict[str, Any]
Hops = dict[str, dict[str, Any]]

#: Envoy's response flags, in words (Envoy's access log docs).
ENVOY_FLAGS = {
    "UC": "upstream connection terminated",
    "UF": "upstream connection failure",
    "UH": "no healthy upstream",
    "URX": "upstream retry limit exceeded",
    "UT": "upstream request timeout",
    "UR": "upstream remote reset",
    "DC": "downstream connection terminated",
    "UO": "upstream overflow",
    "NR": "no route",
    "LR": "connection local reset",
}


def in_flight_at(record: Record, t_ms: float) -> bool:
    """Started before t and not ended by t (a request with no end never ended)."""
    end = record.get("end_ms")
    return record["start_ms"] < t_ms and (end is None or end > t_ms)


@dataclass(frozen=True, slots=True)
class Phases:
    """The victim's termination sequence on one clock (ms); None for what did not
    happen. A failure served by another node is `on_other_node` (account), not a phase
    of this sequence."""

    termination: float
    lb_check_failing: float | None  # HAProxy's first failed check of the victim's node
    lb_down: float | None  # HAProxy marked it DOWN (or NOLB, MAINT)
    pod_gone: float | None

    def of(self, t_ms: float) -> str:
        if t_ms < self.termination:
            return "before_termination"
        if self.pod_gone is not None and t_ms >= self.pod_gone:
            return "after_pod_gone"
        if self.lb_down is not None and t_ms >= self.lb_down:
            return "after_lb_down"
        if self.lb_check_failing is not None and t_ms >= self.lb_check_failing:
            return "lb_detection"
        return "drain"


def victims(term: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pod the event terminated, in the order it did, as {pod, node, ms}: the
    termination record's `pods`, or its one pod at its own time (a record from before
    an event could terminate more than one)."""
    return list(term.get("pods") or [{"pod": term["pod"], "node": term["node"], "ms": term["ms"]}])


def phases_by_pod(events: list[dict[str, Any]], term: dict[str, Any]) -> dict[str, Phases]:
    """pod -> its termination's phases, in the order the event terminated them."""
    return {
        v["pod"]: phases(events, v["ms"], v["pod"], v["node"], term["lb"]) for v in victims(term)
    }


def phase_pod(served: dict[str, Any], t_ms: float, term: dict[str, Any]) -> str | None:
    """The terminated pod whose phases a failure at t_ms falls in; None when a gateway
    the event did not terminate served it. The pod that served it when its Envoy logged
    it; else the last pod terminated on its node by then (a node's old gateway and its
    replacement share the node); else, where it was served unknown, the first pod."""
    pods = victims(term)
    gateway = served.get("gateway_pod")
    if gateway:
        return gateway if any(v["pod"] == gateway for v in pods) else None
    node = served.get("node")
    if node is None:
        return str(pods[0]["pod"])
    on_node = [v for v in pods if v["node"] == node]
    if not on_node:
        return None
    begun = [v for v in on_node if v["ms"] <= t_ms]
    return str((begun[-1] if begun else on_node[0])["pod"])


def phases(events: list[dict[str, Any]], t_term: float, pod: str, node: str, lb: str) -> Phases:
    def first(pred: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((e["ts_ms"] for e in events if e["ts_ms"] >= t_term and pred(e)), None)

    def ours(e: dict[str, Any]) -> bool:
        return e.get("source") == "haproxy" and e.get("lb") in (None, lb)

    return Phases(
        termination=t_term,
        lb_check_failing=first(
            lambda e: (
                ours(e)
                and e.get("kind") == "health_check_log"
                and f"/{node} " in e.get("line", "")
                and "failed" in e.get("line", "")
            )
        ),
        # the log line is stamped as it arrives; the runtime API is polled every 0.1 s
        lb_down=first(lambda e: ours(e) and _marks_out(e, node)),
        pod_gone=first(lambda e: e.get("kind") == "pod_terminated" and e.get("pod") == pod),
    )


def _marks_out(e: dict[str, Any], node: str) -> bool:
    """HAProxy took the node out: a DOWN/NOLB/MAINT state, or its log line saying so."""
    if e.get("kind") == "server_state":
        return e.get("server") == node and str(e.get("status", "")).startswith(
            ("DOWN", "NOLB", "MAINT")
        )
    line = str(e.get("line", ""))
    return (
        e.get("kind") == "server_log"
        and f"/{node} is " in line
        and any(w in line for w in (" is DOWN", " is going DOWN", "NOLB"))
    )


def index_hops(events: list[dict[str, Any]], lb: str) -> tuple[dict[str, Hops], dict[str, int]]:
    """request id -> {"haproxy": line, "envoy": line, "backend": line} (those present),
    and request id -> how many request lines the LB logged for it. More than one: the
    client's HTTP stack sent it again on its own (Go's Transport re-sends a GET whose
    reused connection closed before any response byte) and reported only the last,
    whose line the hops keep."""
    out: dict[str, Hops] = {}
    lb_lines: dict[str, int] = {}
    for e in events:
        src, kind = e.get("source"), e.get("kind")
        if src == "haproxy" and kind == "request_log" and e.get("lb") in (None, lb):
            hop, rid = "haproxy", e.get("rid")
        elif src == "envoy" and kind == "access_log":
            hop, rid = "envoy", e.get("request_id")
        elif src == "backend" and kind == "request":
            hop, rid = "backend", e.get("request_id")
        else:
            continue
        if rid and rid != "-":
            out.setdefault(rid, {})[hop] = e
            if hop == "haproxy":
                lb_lines[rid] = lb_lines.get(rid, 0) + 1
    return out, lb_lines


#: How far apart the backend's idle close and Envoy's request on that connection may
#: be for the one to explain the other: the race is milliseconds wide, the lines'
#: stamps are the pods' own clocks (one machine in both labs' runs so far).
IDLE_CLOSE_WINDOW_MS = 1000.0


def backend_idle_closes(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """peer (Envoy's address:port) -> the backend's idle closes of its connection."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("source") == "backend" and e.get("kind") == "idle_close" and e.get("peer"):
            out.setdefault(str(e["peer"]), []).append(e)
    return out


def idle_close_of(hops: Hops, closes: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The backend's idle close of the connection Envoy sent this request on, at the
    moment it did (IDLE_CLOSE_WINDOW_MS), or None."""
    env = hops.get("envoy")
    started = _started_ms(env) if env else None
    if env is None or started is None or not env.get("upstream_local"):
        return None
    return next(
        (
            c
            for c in closes.get(str(env["upstream_local"]), [])
            if abs(c["ts_ms"] - started) <= IDLE_CLOSE_WINDOW_MS
        ),
        None,
    )


def _started_ms(env: dict[str, Any]) -> float | None:
    """When Envoy began the request (%START_TIME%, its own clock), in ms; the line's
    `ts_ms` is when the collector read it, a flush and a log stream later."""
    try:
        return datetime.fromisoformat(str(env.get("start_time"))).timestamp() * 1000
    except ValueError:
        return None


def expected_hops(record: Record, hops: Hops) -> list[str]:
    """The hops that must have logged this request, from what the others say."""
    if record.get("error") in ("refused",) and "haproxy" not in hops:
        return []  # the client never reached HAProxy
    want = ["haproxy"]
    ha = hops.get("haproxy")
    if ha is None or (ha.get("srv") not in (None, "<NOSRV>") and ha.get("Tc") != "-1"):
        want.append("envoy")  # HAProxy connected to a gateway (or we cannot tell)
    env = hops.get("envoy")
    if (
        "envoy" in want
        and (env is None or env.get("upstream_host") not in (None, "-", ""))
        # the backend closed the connection before the request reached it
        and "backend_idle_close" not in hops
    ):
        want.append("backend")
    return want


def gateway_nodes(events: list[dict[str, Any]]) -> dict[str, str]:
    """pod -> node, from the EndpointSlice collector's lines."""
    return {
        str(e["pod"]): str(e["node"])
        for e in events
        if e.get("source") == "endpointslice" and e.get("pod") and e.get("node")
    }


def served_by(hops: Hops, pod_nodes: dict[str, str], lb: str) -> dict[str, str | None]:
    """HAProxy's server (`lb_server`) and the node whose gateway served the request.

    A server is its node's NodePort, and its node's gateway alone answers it
    (externalTrafficPolicy: Local), except on the LB's own node: kube-proxy sends a
    node's own traffic to its NodePort to any ready endpoint in the cluster, whatever
    the policy says (the homelab's HAProxy runs on a worker). So the node is the Envoy
    line's pod's when there is one, the server's otherwise unless it is the LB's own
    node, and None (unknown) then and with no server.
    """
    ha, env, be = hops.get("haproxy", {}), hops.get("envoy", {}), hops.get("backend", {})
    srv, pod = ha.get("srv"), env.get("pod")
    if pod in pod_nodes:
        node: str | None = pod_nodes[pod]
    elif srv in (None, "<NOSRV>", lb):
        node = None
    else:
        node = srv
    return {"lb_server": srv, "node": node, "gateway_pod": pod, "backend_pod": be.get("pod")}


def _flags(env: dict[str, Any]) -> list[str]:
    raw = str(env.get("response_flags") or "-")
    return [] if raw == "-" else raw.split(",")


# ---------------------------------------------------------------- cause rules
# Each: (name, holds(record, hops), words(record, hops)). The first that holds names
# the cause. Keep them small and factual: each is tested with a real case.


def _ha(hops: Hops) -> dict[str, Any]:
    return hops.get("haproxy", {})


def _term(hops: Hops) -> str:
    return str(_ha(hops).get("term", ""))


def _h2_words(record: Record) -> str:
    """What an HTTP/2 client was told, when the stream's end had a code (a gRPC call's
    words are its own: _grpc_words)."""
    if record.get("grpc_status"):
        return ""
    if record.get("h2_error") == "RST_STREAM REFUSED_STREAM":
        # seen on the local lab (istio-native, h2): a stream whose server connection
        # HAProxy was still opening when the DOWN killed it (Tc -1)
        return "; the client got RST_STREAM REFUSED_STREAM: unprocessed, safe to send again"
    if record.get("h2_error"):
        return f"; the client got {record['h2_error']}"
    return ""


RULES: list[tuple[str, Callable[[Record, Hops], bool], Callable[[Record, Hops], str]]] = [
    (
        # HAProxy's termination state D?: "killed by haproxy because the server was
        # detected as down and was configured to kill all connections when going down"
        "lb_killed_session_at_down",
        lambda r, h: _term(h).startswith("D"),
        lambda r, h: (
            f"HAProxy {_ha(h).get('st')}, termination state {_term(h)}: HAProxy "
            "killed the session when it marked the server DOWN (on-marked-down shutdown-sessions)"
            + _h2_words(r)
        ),
    ),
    (
        "lb_killed_session",
        lambda r, h: _term(h).startswith("K"),
        lambda r, h: (
            f"HAProxy {_ha(h).get('st')}, termination state {_term(h)}: the session was "
            "killed on HAProxy (an admin action, e.g. `shutdown sessions`)"
        ),
    ),
    (
        "lb_no_server",
        lambda r, h: _ha(h).get("srv") == "<NOSRV>",
        lambda r, h: (
            f"HAProxy {_ha(h).get('st')} with no server: every gateway node was out of the backend"
        ),
    ),
    (
        "backend_cut_at_shutdown",
        lambda r, h: h.get("backend", {}).get("msg") == "cancelled_at_shutdown_timeout",
        lambda r, h: "the backend cut it at its shutdown deadline (SHUTDOWN_TIMEOUT)",
    ),
    (
        # Seen on onebox (improved, busy): a 503 UC from the survivor's Envoy,
        # upstream_reset_before_response_started{connection_termination}, no backend
        # line. The backend closes a keep-alive connection idle for its keepalive_s
        # (75 s); Envoy keeps idle upstream connections for an hour unless told
        # otherwise, and may send on one as the backend closes it.
        "backend_closed_idle_connection",
        lambda r, h: "backend_idle_close" in h,
        lambda r, h: (
            f"Envoy {h['envoy'].get('response_code')} {h['envoy'].get('response_flags')}: "
            f"the backend closed the keep-alive connection Envoy sent it on "
            f"({h['backend_idle_close'].get('peer')}, idle "
            f"{h['backend_idle_close'].get('idle_s')} s) as the request went out: the "
            "backend's idle timeout ended a connection the gateway still held"
        ),
    ),
    (
        "gateway_upstream_failure",
        lambda r, h: any(f in ENVOY_FLAGS and f != "DC" for f in _flags(h.get("envoy", {}))),
        lambda r, h: "Envoy {} {}: {}".format(
            h["envoy"].get("response_code"),
            h["envoy"].get("response_flags"),
            "; ".join(ENVOY_FLAGS[f] for f in _flags(h["envoy"]) if f in ENVOY_FLAGS),
        ),
    ),
    (
        "gateway_closed_connection_before_answering",
        lambda r, h: _term(h) == "SH" and "envoy" not in h,
        lambda r, h: (
            f"HAProxy {_ha(h).get('st')}, termination state SH: the gateway closed "
            "the server connection before answering (Envoy logged no request: a reused "
            "connection it was closing, or its listener going away)"
        ),
    ),
    (
        "gateway_aborted_response",
        lambda r, h: _term(h).startswith("S") and _term(h)[1:2] == "D",
        lambda r, h: (
            f"HAProxy termination state {_term(h)}: the gateway side aborted the "
            "response while it was being sent"
        ),
    ),
    (
        "gateway_downstream_reset",
        lambda r, h: "DC" in _flags(h.get("envoy", {})),
        lambda r, h: (
            "Envoy DC: the connection from HAProxy to the gateway was closed "
            "before the response ended"
        ),
    ),
    (
        # Seen on onebox (improved, busy): a WebSocket session HAProxy sent to the victim
        # while it drained, upgraded (101 at every hop, no flag), then closed cleanly by
        # Istio's Envoy mid-session: its access log says on_drain_deadline, the backend
        # client_disconnected, HAProxy `--`. A close, not a reset: no other rule sees it.
        "gateway_closed_at_drain_deadline",
        lambda r, h: h.get("envoy", {}).get("response_code_details") == "on_drain_deadline",
        lambda r, h: (
            f"Envoy {h['envoy'].get('response_code')}, details on_drain_deadline: the "
            "draining gateway closed the connection at its drain deadline, mid-response "
            "(an upgraded WebSocket session is one response)"
        ),
    ),
    (
        # Seen on the local lab (improved, steady): a pooled request sent 7 ms before
        # the DOWN, answered 200 by Envoy and the backend, reset at the client, and
        # no HAProxy line. HAProxy closes a reused client connection without a
        # response or a log line when the stream ends before any response
        # (haproxy/haproxy#1109), so "no HAProxy line" does not mean "never reached it".
        "lb_cut_forwarded_request_unlogged",
        lambda r, h: "haproxy" not in h and "envoy" in h and r.get("error") == "reset",
        lambda r, h: (
            f"Envoy answered {h['envoy'].get('response_code')} but the client got 'reset' "
            "and HAProxy logged nothing: HAProxy cut the request it had forwarded and "
            "closed the client's connection without a response or a log line"
        ),
    ),
    (
        # HAProxy answers an HTTP/2 stream so, and logs nothing, when the reused server
        # connection it sent the request on closed before any response: "the client
        # knows it can safely retry" (haproxy/haproxy#3414, a maintainer's words)
        "lb_refused_stream_unlogged",
        lambda r, h: "haproxy" not in h and r.get("h2_error") == "RST_STREAM REFUSED_STREAM",
        lambda r, h: (
            "the client got RST_STREAM REFUSED_STREAM and HAProxy logged nothing: the "
            "reused connection to the gateway HAProxy had sent the stream on closed "
            "before any response; unprocessed, safe to send again"
        ),
    ),
    (
        "client_could_not_reach_lb",
        lambda r, h: "haproxy" not in h and r.get("error") in ("refused", "timeout", "reset"),
        lambda r, h: f"the client got '{r.get('error')}' and HAProxy logged no request",
    ),
]


def _grpc_words(record: Record) -> str:
    """What a gRPC client was told: the call's status and how far its stream got."""
    code = record.get("grpc_status")
    if not code:
        return ""
    got = f"{record.get('chunks', 0)} of {record.get('expected_chunks')} messages"
    h2 = f" ({record['h2_error']})" if record.get("h2_error") else ""
    if code == "UNKNOWN" and "END_STREAM" in (record.get("detail") or ""):
        # seen on the local lab (h2, every mode but ordered): HAProxy, killing the
        # session at the DOWN, ended the client's stream cleanly, with no trailers
        h2 = " (the stream ended with END_STREAM and no grpc-status trailer)"
    return f"; the gRPC client got {code}{h2} after {got}"


def explain(record: Record, hops: Hops) -> tuple[str, str]:
    """(rule, cause in words) for a failed request."""
    for name, holds, words in RULES:
        if holds(record, hops):
            return name, words(record, hops) + _grpc_words(record)
    ha, env = _ha(hops), hops.get("envoy", {})
    known = [f"client {record.get('error')}"]
    if ha:
        known.append(f"HAProxy {ha.get('st')} {ha.get('term')} via {ha.get('srv')}")
    if env:
        known.append(f"Envoy {env.get('response_code')} {env.get('response_flags')}")
    return "unexplained", "unexplained: " + ", ".join(known) + _grpc_words(record)


def account(
    records: list[Record],
    events: list[dict[str, Any]],
    term: dict[str, Any],
) -> tuple[list[Record], dict[str, Phases]]:
    """Each record joined with its hops; failures with cause and phase; and each
    terminated pod's phases (phases_by_pod)."""
    by_pod = phases_by_pod(events, term)
    pod_gone = {pod: ph.pod_gone for pod, ph in by_pod.items()}
    hops_by_id, lines_by_id = index_hops(events, term["lb"])
    pod_nodes = gateway_nodes(events)
    closes = backend_idle_closes(events)
    out = []
    for r in records:
        hops = hops_by_id.get(r.get("request_id") or "", {})
        if r.get("error") and (close := idle_close_of(hops, closes)) is not None:
            hops = {**hops, "backend_idle_close": close}
        joined = dict(r)
        want = expected_hops(r, hops)
        joined["served_by"] = served_by(hops, pod_nodes, term["lb"])
        joined["missing_hops"] = [h for h in want if h not in hops]
        ha, env, be = hops.get("haproxy", {}), hops.get("envoy", {}), hops.get("backend", {})
        joined["haproxy"] = (
            {k: ha.get(k) for k in ("st", "term", "srv", "Ta", "hv", "bh")} if ha else None
        )
        joined["envoy"] = (
            {
                k: env.get(k)
                for k in (
                    "response_code",
                    "response_flags",
                    "upstream_host",
                    "protocol",
                    "grpc_status",
                )
            }
            if env
            else None
        )
        joined["backend"] = {k: be.get(k) for k in ("status", "msg")} if be else None
        joined["exposed"], joined["exposed_to"] = exposure(r, joined["served_by"], term, pod_gone)
        if r.get("first_attempt"):
            joined["first_attempt"] = first = first_attempt(
                r, hops_by_id, pod_nodes, term, pod_gone
            )
            # a retried request is exposed when either attempt was
            joined["exposed"] = _either(joined["exposed"], first["exposed"])
        resent = lines_by_id.get(r.get("request_id") or "", 0) - 1
        if resent > 0:
            joined["resent_by_client"] = resent  # its hops above are the last attempt's
        if r.get("error"):
            joined["rule"], joined["cause"] = explain(r, hops)
            at = r.get("end_ms") or r["start_ms"]
            # a failure's phases are those of the terminated pod that served it; one
            # on a gateway the event did not terminate (a session HAProxy killed on the
            # survivor) is named for where it happened
            pod = phase_pod(joined["served_by"], at, term)
            joined["phase"] = "on_other_node" if pod is None else by_pod[pod].of(at)
            joined["phase_of"] = pod
        out.append(joined)
    return out, by_pod


def _either(a: bool | None, b: bool | None) -> bool | None:
    """Exposed if either was; not if neither was; unknown otherwise."""
    if a or b:
        return True
    return None if a is None or b is None else False


def first_attempt(
    record: Record,
    hops_by_id: dict[str, Hops],
    pod_nodes: dict[str, str],
    term: dict[str, Any],
    pod_gone: dict[str, float | None],
) -> Record:
    """A retried request's first attempt joined with its own hops (its own id), with
    where it was served, whether it was exposed and, failed, its cause."""
    fa = dict(record["first_attempt"])
    hops = hops_by_id.get(fa.get("request_id") or "", {})
    attempt = {**record, **fa}
    fa["served_by"] = served_by(hops, pod_nodes, term["lb"])
    fa["exposed"], _ = exposure(attempt, fa["served_by"], term, pod_gone)
    if fa.get("error"):
        fa["rule"], fa["cause"] = explain(attempt, hops)
    return fa


def in_flight_during(record: Record, start_ms: float, end_ms: float | None) -> bool:
    """In flight at some moment of [start, end] (no end: until now)."""
    end = record.get("end_ms")
    began_in_time = end_ms is None or record["start_ms"] <= end_ms
    return began_in_time and (end is None or end > start_ms)


def exposure(
    record: Record,
    served: dict[str, Any],
    term: dict[str, Any],
    pod_gone: dict[str, float | None] | None = None,
) -> tuple[bool | None, str | None]:
    """Whether the request was on a terminating gateway while it terminated, and which
    terminated pod (`served`: served_by's; `pod_gone`: pod -> when it was gone, None for
    not seen gone). Exposed is None when where it was served is unknown and it was in
    flight while one terminated."""
    gone = pod_gone or {}
    during = [v for v in victims(term) if in_flight_during(record, v["ms"], gone.get(v["pod"]))]
    if not during:
        return False, None
    if served.get("gateway_pod"):  # the pod its Envoy line names
        pod = next((str(v["pod"]) for v in during if v["pod"] == served["gateway_pod"]), None)
    elif served.get("node"):
        pod = next((str(v["pod"]) for v in during if v["node"] == served["node"]), None)
    elif served.get("lb_server") == "<NOSRV>":
        return False, None  # HAProxy had no server for it: no gateway saw it
    else:
        return None, None
    return pod is not None, pod
