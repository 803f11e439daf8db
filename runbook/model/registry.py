"""The one registry of termination modes and load scenarios, and the names every part
of the project shares (the HAProxy backend, the gateway's listener stat).

The roles and playbooks read it through the project's filter plugin
(`filter_plugins/igw.py`: `igw_registry`, `igw_gateway_active_stat_regex`), the Python code by
import. Adding a mode is one
entry here plus its template delta in `roles/manifests/templates/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ObjectNames:
    """The Kubernetes objects' names: the manifests role renders them, the gateway role
    waits for them, the homelab runner, its collectors and verify look them up."""

    namespace: str = "service-a"
    #: the gateway's Deployment, ServiceAccount, Service and pod label `app`
    gateway_deployment: str = "service-a-igw"
    #: the pod label `istio` the Gateway's selector matches
    gateway_selector: str = "service-a-igw"
    gateway: str = "service-a-gateway"
    virtualservice: str = "service-a"
    backend: str = "backend"


@dataclass(frozen=True)
class Ports:
    """The ports the manifests, the haproxy role, the local lab and the collectors share."""

    #: the Gateway server's port: Envoy's listener
    gateway: int = 8080
    #: hc's API (health checks, /drain, /fault)
    hc: int = 18180
    #: pilot-agent's status port (/healthz/ready)
    status: int = 15021
    #: Envoy's admin (stats, /listeners, /drain_listeners)
    envoy_admin: int = 15000
    backend: int = 8080
    #: the backend's gRPC service (its container `ticker`; the Service port `grpc`)
    backend_grpc: int = 9090
    #: the gateway Service's NodePorts on every node: traffic, hc, status
    nodeport_http: int = 30080
    nodeport_hc: int = 30180
    nodeport_status: int = 32021


OBJECTS = ObjectNames()
PORTS = Ports()
#: The label selector of the gateway's pods (every mode's).
GATEWAY_POD_SELECTOR = f"app={OBJECTS.gateway_deployment}"

#: HAProxy's backend of gateway NodePorts: the haproxy role's config, the collectors'
#: `show stat` filter and the runners all use this name.
HAPROXY_BACKEND = "igw_nodeports"


def gateway_stat_prefix(gateway_port: int) -> str:
    """The gateway listener's HTTP connection manager stat prefix as Istio 1.30 names it,
    `outbound_0.0.0.0_<port>;` (the `;` ends the name for Istio's tag extraction;
    onebox's istiod showed it, older Istio spelled it without). The local lab's static
    Envoy uses it, so the gauge below has Istio's name there too."""
    return f"outbound_0.0.0.0_{gateway_port};"


def gateway_active_stat_regex(gateway_port: int) -> str:
    """A regex (no anchors: Envoy's stats matcher matches whole names) for that gauge,
    with or without Istio's `;`: what the Envoy collector polls and the manifests'
    proxyStatsMatcher lets Istio emit. graceful-drain.sh's default filter spells the
    same regex: a shell script outside the project's Python (its ACTIVE_STATS_FILTER)."""
    return rf"http\.outbound_0\.0\.0\.0_{gateway_port};?\.downstream_rq_active"


#: The header that carries each request's id through every hop. The load driver sends
#: it (and the same value as X-Request-Id); HAProxy, Envoy and the backend log it. Our
#: own header because a gateway may rewrite X-Request-Id: Istio's gateway treats an
#: external request's X-Request-Id as untrusted and generates a new one
#: (istio/istio#10875), which would break the join on the homelab.
REQUEST_ID_HEADER = "X-Igw-Request-Id"

#: The gRPC method the grpc_stream class calls: server streaming, a message every
#: interval (the backend's Ticker, apps/backend/ticker.py, which names it too; a test
#: keeps the two equal). The gateway routes the service's prefix to the backend's gRPC
#: port, the rest to its HTTP port.
GRPC_TICKS_METHOD = "/igw.v1.Ticker/Ticks"
GRPC_ROUTE_PREFIX = GRPC_TICKS_METHOD.rsplit("/", 1)[0] + "/"

#: The marker HAProxy's per-request log line starts with (log-format in the haproxy role).
HAPROXY_REQUEST_LOG_TAG = "igw_request"

#: Envoy's access log, one JSON object a line: the same keys in the local lab's
#: bootstrap and in the homelab's meshConfig (istio role), so one parser reads both.
#: Values are Envoy command operators.
ENVOY_ACCESS_LOG_FORMAT: dict[str, str] = {
    "igw_access_log": "1",
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-IGW-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "upstream_host": "%UPSTREAM_HOST%",
    # Envoy's side of its connection to the backend: the backend logs the same address
    # as the peer of a keep-alive connection it closed for idleness
    "upstream_local": "%UPSTREAM_LOCAL_ADDRESS%",
    "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "duration_ms": "%DURATION%",
    "bytes_sent": "%BYTES_SENT%",
    "downstream_remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
    # HTTP/1.1 or HTTP/2: what HAProxy spoke to the gateway (registry LB_PROTOCOLS)
    "protocol": "%PROTOCOL%",
    # a gRPC call's status from the backend's trailers (or Envoy's own), `-` for HTTP
    "grpc_status": "%GRPC_STATUS%",
}

#: How often Envoy writes its buffered access log to stdout, in both labs (Envoy's
#: default is 10 s, Istio's 1 s). pilot-agent kills Envoy (SIGKILL) at zero active
#: connections or at terminationDrainDuration: lines still in the buffer then are lost,
#: and a request served in the last interval would have no Envoy hop.
ENVOY_ACCESS_LOG_FLUSH_MS = 10


@dataclass(frozen=True, slots=True)
class ProbePaths:
    """hc's paths each observer checks: HAProxy, kubelet readiness, kubelet liveness."""

    lb: str
    readiness: str
    liveness: str


#: What HAProxy's check may target: the hc sidecar's port or istio-proxy's status port
#: (pilot-agent's /healthz/ready), by the gateway Service's port names. The NodePorts
#: themselves are the roles' defaults.
LB_CHECK_TARGETS = ("hc", "status")

#: How a gateway pod's termination is driven (the preStop in the hc container):
#: fail-and-sleep - the seed's current mode: fail the LB check at once, sleep
#: graceful-drain - graceful-drain.sh in the seed's order (drain, zero, LB, readiness)
#: ordered-drain  - graceful-drain.sh with DRAIN_ORDER=lb-first (NOLB, wait, drain, zero,
#:                  LB DOWN, readiness)
#: none           - no preStop: pilot-agent's own drain on SIGTERM
PRESTOPS = ("fail-and-sleep", "graceful-drain", "ordered-drain", "none")


@dataclass(frozen=True, slots=True)
class LbSettings:
    """What HAProxy must do for the mode's order to hold, and what it checks."""

    shutdown_sessions: bool
    disable_on_404: bool
    check: str  # one of LB_CHECK_TARGETS
    check_uri: str


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    manifest: str  # the gateway Deployment's file in manifests/
    summary: str
    probes: ProbePaths | None  # the hc sidecar's probe paths; None: no hc sidecar
    prestop: str  # one of PRESTOPS
    lb: LbSettings
    protected_path: str  # key of timing.protected_by_path()
    # pilot-agent's EXIT_ON_ZERO_ACTIVE_CONNECTIONS (with MINIMUM_DRAIN_DURATION)
    proxy_exit_on_zero: bool = False


#: What the client does with a failed idempotent request, as many clients do:
#: none - each request once (the experiment's default: every failure shows)
#: once - a connection refused or reset before any response, or a 502, 503 or 504, is
#:        sent once more; the record keeps both outcomes (`first_attempt`, the final)
CLIENT_RETRIES = ("none", "once")
#: The statuses `once` retries (the errors: records.RETRIED_ERRORS).
RETRIED_STATUSES = (502, 503, 504)

#: What drives a class: the load driver's own asyncio client, or vegeta (built from its
#: pinned Go module) where a class's rate is more than that client holds on this machine.
LOAD_TOOLS = ("aiohttp", "vegeta")

#: What HAProxy speaks to the gateways on its server lines:
#: h1 - HTTP/1.1, a connection per request in flight (the seed's)
#: h2 - HTTP/2 in cleartext with prior knowledge (`proto h2`): the streams of many
#:      clients share a few connections, and a draining gateway ends one with GOAWAY.
#:      Both labs' gateway listeners take either (Istio's gateway HTTP connection
#:      manager has codec AUTO, the local lab's Envoy the same). WebSockets stay
#:      HTTP/1.1 (`ws h1`): Istio's gateway does not offer RFC 8441's extended CONNECT.
LB_PROTOCOLS = ("h1", "h2")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    classes: tuple[str, ...]  # the request classes it drives (REQUEST_CLASSES)
    #: every class keeps starting through the termination (else: a burst of long
    #: requests in flight at it, short requests at a fixed rate)
    continuous: bool = True
    #: what drives the short_pooled class (one of LOAD_TOOLS)
    pooled_tool: str = "aiohttp"
    #: its runs take the machine's CPUs alone (on the local lab, one lab at a time):
    #: beside other labs the LB and the gateways would share the CPUs with their runs
    alone: bool = False
    #: run by `make experiment` unless SCENARIOS= names others
    by_default: bool = True
    #: what HAProxy speaks to the gateways (one of LB_PROTOCOLS): the lab's HAProxy is
    #: configured for its scenarios' protocol
    lb_protocol: str = "h1"


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            name="current",
            manifest="20-igw-current.yaml",
            summary="one probe path for all observers, failed at once by the preStop",
            probes=ProbePaths("/health_check.html", "/health_check.html", "/health_check.html"),
            prestop="fail-and-sleep",
            lb=LbSettings(True, False, "hc", "/health_check.html"),
            protected_path="gateway_current",
        ),
        Mode(
            name="improved",
            manifest="21-igw-improved.yaml",
            summary="three probe paths; graceful-drain.sh drains, waits for zero, then fails "
            "the LB check and, LB_BUFFER later, readiness",
            probes=ProbePaths("/health_check.html", "/health", "/live"),
            prestop="graceful-drain",
            lb=LbSettings(True, False, "hc", "/health_check.html"),
            protected_path="gateway_improved",
        ),
        Mode(
            name="ordered",
            manifest="23-igw-ordered.yaml",
            summary="LB first: once every kube-proxy has dropped the endpoint "
            "(ENDPOINT_SYNC_WAIT), the check answers 404 (HAProxy NOLB: no new requests, "
            "sessions kept), NOLB_WAIT, then Envoy drains, zero in flight, the LB DOWN and, "
            "LB_BUFFER later, readiness",
            probes=ProbePaths("/health_check.html", "/health", "/live"),
            prestop="ordered-drain",
            # disable-on-404 makes the 404 a soft drain; the DOWN's shutdown-sessions
            # comes after zero in flight, so it cuts nothing the order protects
            lb=LbSettings(True, True, "hc", "/health_check.html"),
            protected_path="gateway_ordered",
        ),
        Mode(
            name="istio-native",
            manifest="24-igw-istio-native.yaml",
            summary="no hc sidecar: pilot-agent's own drain (EXIT_ON_ZERO_ACTIVE_CONNECTIONS, "
            "MINIMUM_DRAIN_DURATION, terminationDrainDuration); HAProxy checks the "
            "gateway's readiness (/healthz/ready on 15021)",
            probes=None,
            prestop="none",
            # the seed's HAProxy, with only the check moved to the status port
            lb=LbSettings(True, False, "status", "/healthz/ready"),
            protected_path="gateway_istio_native",
            proxy_exit_on_zero=True,
        ),
    )
}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="inflight",
            summary="long /sleep and /stream requests in flight at the termination, short "
            "requests at a fixed rate before, during and after it",
            classes=("sleep", "stream", "short"),
            continuous=False,
        ),
        Scenario(
            name="steady",
            summary="every class keeps starting throughout the termination: short requests "
            "over pooled keep-alive and over fresh connections, /sleep, /stream and "
            "WebSocket sessions",
            classes=("sleep", "stream", "ws", "short", "short_pooled"),
        ),
        Scenario(
            name="busy",
            summary="steady's classes, with short requests over the keep-alive pool at a "
            "thousand a second (vegeta): a loss of one in ten thousand shows",
            classes=("sleep", "stream", "ws", "short", "short_pooled"),
            pooled_tool="vegeta",
            alone=True,
            by_default=False,
        ),
        Scenario(
            name="h2",
            summary="steady's classes, short requests over one HTTP/2 connection to HAProxy "
            "as well (h2_short), server-streaming gRPC calls (grpc_stream), and HAProxy "
            "speaking HTTP/2 to the gateways: streams share connections, a drain ends one "
            "with GOAWAY",
            classes=("sleep", "stream", "ws", "grpc_stream", "short", "short_pooled", "h2_short"),
            by_default=False,
            lb_protocol="h2",
        ),
    )
}

#: What `make experiment` runs when SCENARIOS= names none.
DEFAULT_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if s.by_default)

#: Every request class any scenario drives, in the order reports show them.
REQUEST_CLASSES = (
    "sleep",
    "stream",
    "ws",
    "grpc_stream",
    "short",
    "short_pooled",
    "h2_short",
)
#: The long classes (each lasting `long_s`): the driver starts them in groups.
LONG_CLASSES = ("sleep", "stream", "ws", "grpc_stream")
#: The classes of short requests (each one response, in milliseconds): the reports
#: count them per second, the long ones each on a lane of its own.
SHORT_CLASSES = ("short", "short_pooled", "h2_short")


@dataclass(frozen=True, slots=True)
class Event:
    """What terminates the gateway pod mid-load, as it happens to users."""

    name: str
    summary: str
    #: None: the local lab models it; else why its stand-ins cannot, and it refuses it
    not_local: str | None


EVENTS = {
    e.name: e
    for e in (
        Event(
            "delete",
            "the victim pod deleted through the API, gracefully (kubectl delete pod)",
            not_local=None,
        ),
        Event(
            "drain",
            "the victim's node cordoned, then its gateway pod evicted through the Eviction "
            "API, which the gateway's PodDisruptionBudget admits (kubectl drain)",
            not_local="the local lab has no API server: no cordon, no Eviction API and no "
            "PodDisruptionBudget to admit or refuse the eviction",
        ),
        Event(
            "scale-down",
            "the gateway Deployment scaled down by one replica: the ReplicaSet picks the "
            "pod to delete by its ranking (kubectl scale), then the replicas are restored",
            not_local="the local lab has no ReplicaSet controller: which pod a scale-down "
            "deletes is its ranking, which no stand-in here reproduces",
        ),
        Event(
            "rollout",
            "the Deployment's pods replaced one after another (kubectl rollout restart)",
            not_local="the local lab has no Deployment controller or scheduler: a surge pod "
            "and its seat on master1 are what a rollout is",
        ),
    )
}
#: What runs when EVENTS= names none: the seed's event.
DEFAULT_EVENT = "delete"
#: The events the local lab's stand-ins model (the others say why not: `not_local`).
LOCAL_EVENTS = tuple(name for name, e in EVENTS.items() if e.not_local is None)
#: How a scenario under an event other than `delete` is named where runs are grouped
#: and compared (a run directory, a comparison's column): `steady@drain`.
CASE_SEPARATOR = "@"


def case(scenario_name: str, event_name: str) -> str:
    """A scenario under an event as one name: the scenario's own under `delete`."""
    if event_name == DEFAULT_EVENT:
        return scenario_name
    return f"{scenario_name}{CASE_SEPARATOR}{event_name}"


def event_on(name: str, target: str) -> Event:
    """The event if `target` (`local`, or a cluster's inventory, which drives every
    event) can drive it, else an error naming the event, why not, and where it can run."""
    known = event(name)
    if target == "local" and known.not_local is not None:
        raise UnknownName(
            f"event {name!r} cannot run on the local lab: {known.not_local}; run it on a "
            f"cluster (TARGET=onebox); the local lab runs: {', '.join(LOCAL_EVENTS)}"
        )
    return known


def split_case(name: str) -> tuple[str, str]:
    """(scenario, event) of a case name (`case`'s inverse), each checked."""
    sc, _, ev = name.partition(CASE_SEPARATOR)
    return scenario(sc).name, event(ev or DEFAULT_EVENT).name


class UnknownName(ValueError):
    """A mode, scenario, event or profile that the registry does not define."""


def require(kind: str, value: str, valid: list[str] | tuple[str, ...]) -> str:
    """`value` if it is one of `valid`, else an error naming both."""
    if value not in valid:
        raise UnknownName(f"{kind} {value!r} is not one of: {', '.join(valid)}")
    return value


def mode(name: str) -> Mode:
    return MODES[require("mode", name, list(MODES))]


def scenario(name: str) -> Scenario:
    return SCENARIOS[require("scenario", name, list(SCENARIOS))]


def event(name: str) -> Event:
    return EVENTS[require("event", name, list(EVENTS))]


def as_dict() -> dict[str, object]:
    """The whole registry as plain data (for Ansible)."""
    return {
        "objects": asdict(OBJECTS),
        "ports": asdict(PORTS),
        "modes": {name: asdict(m) for name, m in MODES.items()},
        "mode_files": {name: m.manifest for name, m in MODES.items()},
        "scenarios": {name: asdict(s) for name, s in SCENARIOS.items()},
        "events": {name: asdict(e) for name, e in EVENTS.items()},
        "case_separator": CASE_SEPARATOR,
        "lb_check_targets": list(LB_CHECK_TARGETS),
        "client_retries": list(CLIENT_RETRIES),
        "lb_protocols": list(LB_PROTOCOLS),
        "haproxy_backend": HAPROXY_BACKEND,
        "request_id_header": REQUEST_ID_HEADER,
        "grpc_route_prefix": GRPC_ROUTE_PREFIX,
        "haproxy_request_log_tag": HAPROXY_REQUEST_LOG_TAG,
        "envoy_access_log_format": ENVOY_ACCESS_LOG_FORMAT,
        "envoy_access_log_flush_ms": ENVOY_ACCESS_LOG_FLUSH_MS,
    }
