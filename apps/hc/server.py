"""hc's HTTP API. Every handler takes the FSM by closure (the seed's shape): no globals.

The contract is `api/openapi.yaml`, served at GET /openapi.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources

from aiohttp import web

from .config import Config
from .fsm import FSM, State, Transition, TransitionRefused

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# path -> (passes in state, ok body, failing status, failing body); seed 003 §4 table.
PROBES: dict[str, tuple[Callable[[State], bool], str, int, str]] = {
    "/health_check.html": (lambda s: s.lb_healthy, "OK", 503, "DRAIN"),
    "/health": (lambda s: s.ready, "OK", 503, "NOT READY"),
    "/live": (lambda s: s.live, "OK", 500, "FAULT"),
}
# path -> (in state, status, body): answers that replace the failing one above. 404 on
# HAProxy's path in NOLB: `http-check disable-on-404` keeps the sessions, stops new ones.
SOFT_ANSWERS: dict[str, tuple[Callable[[State], bool], int, str]] = {
    "/health_check.html": (lambda s: s.lb_soft_drain, 404, "NOLB"),
}

# path -> (states it may start from, target state); /fault is separate (any state).
TRANSITIONS: dict[str, tuple[tuple[State, ...], State]] = {
    "/drain": ((State.OPEN,), State.DRAINING),
    # the ordered mode's first step: no new LB traffic, nothing else changes
    "/nolb": ((State.OPEN,), State.NOLB),
    "/close-lb": ((State.DRAINING, State.NOLB), State.CLOSING),
    "/close": ((State.CLOSING,), State.CLOSED),
    # CLOSED is not here: once readiness failed the endpoint is gone, reopening
    # would only confuse the LB and kube-proxy (unrecoverable, 409).
    "/reopen": ((State.NOLB, State.DRAINING, State.CLOSING), State.OPEN),
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _etag(state: State) -> str:
    return f'"hc-{state.lower()}"'


def _if_none_match(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def probe_handler(
    fsm: FSM,
    passes: Callable[[State], bool],
    ok_body: str,
    fail_status: int,
    fail_body: str,
    soft: tuple[Callable[[State], bool], int, str] | None = None,
) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        state = fsm.state
        headers = {"Cache-Control": "max-age=1", "ETag": _etag(state)}
        if soft is not None and soft[0](state):
            return web.Response(status=soft[1], text=soft[2], headers=headers)
        if not passes(state):
            return web.Response(status=fail_status, text=fail_body, headers=headers)
        # RFC 9110 §13.1.2: a conditional GET only turns a would-be 2xx into 304.
        if _if_none_match(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=headers)
        return web.Response(status=200, text=ok_body, headers=headers)

    return handle


def transition_handler(
    fsm: FSM, allowed_from: tuple[State, ...], to: State, config: Config
) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        reason = f"{request.method} {request.path} from {request.remote}"
        try:
            t = fsm.advance(allowed_from, to, reason)
        except TransitionRefused as exc:
            return conflict(exc)
        headers = {}
        if t.from_state is State.CLOSING and to is State.OPEN:
            # HAProxy already counts this server DOWN; it needs `rise` passing checks.
            delay = config.lb_rise * config.lb_inter_s
            headers["Warning"] = (
                f'199 - "reopened from CLOSING: HAProxy re-admits after rise x inter = '
                f'{config.lb_rise} x {config.lb_inter_s:g}s = {delay:g}s"'
            )
        return web.json_response(transition_body(t), headers=headers)

    return handle


def fault_handler(fsm: FSM) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        t = fsm.fail(f"{request.method} {request.path} from {request.remote}")
        return web.json_response(transition_body(t))

    return handle


def status_handler(fsm: FSM) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        state, since, history = fsm.snapshot()
        return web.json_response(
            {
                "ready": state.ready,
                "state": str(state),
                "progress": {
                    "since": _iso(since),
                    "lb_healthy": state.lb_healthy,
                    "lb_soft_drain": state.lb_soft_drain,
                    "live": state.live,
                    "transitions": [{**t.as_dict(), "at": _iso(t.wall)} for t in history],
                },
            }
        )

    return handle


def transition_body(t: Transition) -> dict[str, object]:
    return {"state": str(t.to_state), "from": str(t.from_state), "at": _iso(t.wall)}


def conflict(exc: TransitionRefused) -> web.Response:
    return web.json_response(
        {
            "error": str(exc),
            "state": str(exc.current),
            "allowed_from": [str(s) for s in exc.allowed_from],
        },
        status=409,
    )


def admin_guard(
    config: Config, log: logging.Logger
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """403 for state-changing requests that do not come from an allowed source."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        routed = request.match_info.http_exception is None
        if routed and request.method == "POST" and not config.admin_allowed(request.remote):
            log.warning(
                "refused", extra={"path": request.path, "remote": request.remote, "status": 403}
            )
            return web.json_response(
                {
                    "error": f"state changes are accepted only from {allowed(config)}",
                    "remote": request.remote,
                },
                status=403,
            )
        return await handler(request)

    return guard


def allowed(config: Config) -> str:
    return ",".join(str(n) for n in config.admin_sources)


async def openapi(_: web.Request) -> web.Response:
    text = resources.files("hc").joinpath("api/openapi.yaml").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="application/yaml")


def build_app(fsm: FSM, config: Config, log: logging.Logger) -> web.Application:
    app = web.Application(middlewares=[admin_guard(config, log)])
    for path, (passes, ok_body, fail_status, fail_body) in PROBES.items():
        app.router.add_get(
            path,
            probe_handler(fsm, passes, ok_body, fail_status, fail_body, SOFT_ANSWERS.get(path)),
        )
    for path, (allowed_from, to) in TRANSITIONS.items():
        app.router.add_post(path, transition_handler(fsm, allowed_from, to, config))
    app.router.add_post("/fault", fault_handler(fsm))
    app.router.add_get("/drain/status", status_handler(fsm))
    app.router.add_get("/openapi.yaml", openapi)
    return app
