"""Container log lines that matter to the timeline, as events.

The programs write logfmt with an `app` field: hc's FSM transitions (`app=hc
msg=transition`), the drain script's steps (`app=graceful-drain`), the pilot-agent
stand-in's drain (`app=pilot-agent`), the backend's line per request (with its request
id). Envoy's access log is one JSON object a line, marked `igw_access_log`. On the
homelab the drain script copies its lines to PID 1's stdout, so they arrive in the hc
container's log stream; on the local lab the pod runner hands over the hook's output.
Either way the line says what it is, so one function reads both. On a cluster the
real pilot-agent writes Istio's console log (`<time>\t<level>\t<message>`, istio
pkg/log): its drain's lines (pkg/envoy/agent.go) become the same pilot-agent events
the stand-in's do.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from applog import parse_logfmt, ts_ms

from ..artifacts.events import event

PILOT_AGENT_KINDS = ("drain_listeners", "killing_envoy", "exit", "active_connections")
PRESTOP_FIELDS = ("active", "outcome", "elapsed", "rc")
BACKEND_FIELDS = ("request_id", "status", "path", "duration_ms", "started")
#: Istio's console encoder: time, level, an optional scope, the message, tab-separated
ISTIO_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z)\t(\w+)\t(?:[\w.-]+\t)?(.*)$")
#: pilot-agent's drain messages (pkg/envoy/agent.go) -> (kind, fields)
ISTIO_AGENT_MESSAGES: tuple[tuple[re.Pattern[str], str, dict[str, str]], ...] = (
    (re.compile(r"^There are still (?P<active>\d+) active connections"), "active_connections", {}),
    (re.compile(r"^There are no more active connections"), "active_connections", {"active": "0"}),
    (re.compile(r"^Agent draining [Pp]roxy"), "drain_listeners", {}),
    (re.compile(r"^Graceful termination period complete"), "killing_envoy", {}),
    (re.compile(r"^Envoy aborted (?P<how>normally|abnormally)"), "exit", {}),
)


def event_from_line(pod: str, container: str, line: str) -> dict[str, Any] | None:
    """The event a log line stands for, or None for a line the timeline does not need."""
    if line.startswith("{") and '"igw_access_log"' in line:
        return _access_log(pod, line)
    if "msg=" not in line:
        return _istio_agent_line(pod, container, line)
    f = parse_logfmt(line)
    app, msg, ts = f.get("app"), f.get("msg", ""), ts_ms(f)
    if app == "hc" and msg == "transition":
        return event(
            "hc",
            "transition",
            ts,
            pod=pod,
            **{"from": f.get("from"), "to": f.get("to"), "reason": f.get("reason")},
        )
    if app == "graceful-drain":
        fields = {k: v for k, v in f.items() if k in PRESTOP_FIELDS}
        return event("prestop", "step", ts, pod=pod, step=f.get("step"), msg=msg, **fields)
    if app == "backend" and f.get("request_id"):
        fields = {k: f.get(k) for k in BACKEND_FIELDS}
        return event("backend", "request", ts, pod=pod, msg=msg, **fields)
    if app == "backend" and msg == "idle_connection_closed":
        # no request: the keep-alive connection it closed names its peer (Envoy's side)
        return event(
            "backend", "idle_close", ts, pod=pod, peer=f.get("peer"), idle_s=f.get("idle_s")
        )
    if app == "pilot-agent" and msg in PILOT_AGENT_KINDS:
        fields = {k: v for k, v in f.items() if k not in ("ts", "msg", "level", "app")}
        return event("pilot-agent", msg, ts, pod=pod, container=container, **fields)
    return None


def _istio_agent_line(pod: str, container: str, line: str) -> dict[str, Any] | None:
    """A drain line of the real pilot-agent, or None."""
    m = ISTIO_LINE.match(line.rstrip("\n"))
    if m is None:
        return None
    for pattern, kind, fixed in ISTIO_AGENT_MESSAGES:
        found = pattern.match(m.group(3))
        if found:
            ts = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1000
            fields = fixed | found.groupdict()
            return event("pilot-agent", kind, ts, pod=pod, container=container, **fields)
    return None


def _access_log(pod: str, line: str) -> dict[str, Any] | None:
    """Envoy's JSON access log line (runbook.model.registry.ENVOY_ACCESS_LOG_FORMAT)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    doc.pop("igw_access_log", None)
    return event("envoy", "access_log", None, pod=pod, **doc)
