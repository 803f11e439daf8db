"""hc over real sockets: `python -m hc` started as a process."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import Procs, http, run_app

PROBES = ("/health_check.html", "/health", "/live")
# seed 003 §4, per state: status of each probe path
EXPECTED = {
    "OPEN": (200, 200, 200),
    # the ordered mode's state: 404 for HAProxy's disable-on-404, the others pass
    "NOLB": (404, 200, 200),
    "DRAINING": (200, 200, 200),
    "CLOSING": (503, 200, 200),
    "CLOSED": (503, 503, 200),
    "FAULT": (503, 503, 500),
}
# the POSTs that reach each state from OPEN
PATH_TO = {
    "OPEN": [],
    "NOLB": ["/nolb"],
    "DRAINING": ["/drain"],
    "CLOSING": ["/drain", "/close-lb"],
    "CLOSED": ["/drain", "/close-lb", "/close"],
    "FAULT": ["/fault"],
}


@pytest.mark.parametrize("state", list(EXPECTED))
def test_probe_answers_per_state(procs: Procs, state: str) -> None:
    hc = procs.hc()
    for path in PATH_TO[state]:
        assert http("POST", hc.url + path)[0] == 200
    got = []
    for path in PROBES:
        status, headers, body = http("GET", hc.url + path)
        got.append(status)
        assert headers["Cache-Control"] == "max-age=1"
        assert headers["ETag"] == f'"hc-{state.lower()}"'
        if path == "/health_check.html":
            assert body == {200: b"OK", 404: b"NOLB", 503: b"DRAIN"}[status]
    assert tuple(got) == EXPECTED[state]
    status, _, body = http("GET", hc.url + "/drain/status")
    doc = json.loads(body)
    assert doc["state"] == state
    assert doc["ready"] is (EXPECTED[state][1] == 200)
    assert [t["to"] for t in doc["progress"]["transitions"]] == [
        {
            "/nolb": "NOLB",
            "/drain": "DRAINING",
            "/close-lb": "CLOSING",
            "/close": "CLOSED",
            "/fault": "FAULT",
        }[p]
        for p in PATH_TO[state]
    ]


def test_ordered_path_nolb_then_close_lb_then_close(procs: Procs) -> None:
    hc = procs.hc()
    assert http("POST", hc.url + "/nolb")[0] == 200
    assert http("POST", hc.url + "/drain")[0] == 409  # NOLB is not the seed's drain window
    assert http("POST", hc.url + "/close-lb")[0] == 200
    assert http("GET", hc.url + "/health_check.html")[0] == 503
    assert http("POST", hc.url + "/close")[0] == 200
    assert http("GET", hc.url + "/health")[0] == 503


def test_reopen_from_nolb_readmits_at_once(procs: Procs) -> None:
    hc = procs.hc()
    assert http("POST", hc.url + "/nolb")[0] == 200
    status, headers, _ = http("POST", hc.url + "/reopen")
    # NOLB is UP to HAProxy: the next 200 takes it back, no rise x inter to wait
    assert status == 200 and "Warning" not in headers
    assert http("GET", hc.url + "/health_check.html")[0] == 200


def test_wrong_method_is_405(procs: Procs) -> None:
    hc = procs.hc()
    assert http("GET", hc.url + "/drain")[0] == 405
    assert http("POST", hc.url + "/health")[0] == 405
    assert http("DELETE", hc.url + "/drain/status")[0] == 405
    assert json.loads(http("GET", hc.url + "/drain/status")[2])["state"] == "OPEN"


def test_wrong_state_is_409_naming_the_state(procs: Procs) -> None:
    hc = procs.hc()
    status, _, body = http("POST", hc.url + "/close")
    assert status == 409
    doc = json.loads(body)
    assert doc["state"] == "OPEN" and doc["allowed_from"] == ["CLOSING"]
    assert http("POST", hc.url + "/drain")[0] == 200
    status, _, body = http("POST", hc.url + "/drain")
    assert status == 409 and json.loads(body)["state"] == "DRAINING"


def test_reopen_from_closed_is_unrecoverable(procs: Procs) -> None:
    hc = procs.hc()
    for path in PATH_TO["CLOSED"]:
        http("POST", hc.url + path)
    status, _, body = http("POST", hc.url + "/reopen")
    assert status == 409 and json.loads(body)["state"] == "CLOSED"


def test_reopen_from_closing_warns_of_lb_readmission(procs: Procs) -> None:
    hc = procs.hc({"HC_LB_RISE": "3", "HC_LB_INTER_S": "1.5"})
    for path in PATH_TO["CLOSING"]:
        http("POST", hc.url + path)
    status, headers, body = http("POST", hc.url + "/reopen")
    assert status == 200 and json.loads(body) | {"at": None} == {
        "state": "OPEN",
        "from": "CLOSING",
        "at": None,
    }
    assert headers["Warning"].startswith("199 - ")
    assert "3 x 1.5s = 4.5s" in headers["Warning"]
    assert http("GET", hc.url + "/health_check.html")[0] == 200


def test_reopen_from_draining_has_no_warning(procs: Procs) -> None:
    hc = procs.hc()
    http("POST", hc.url + "/drain")
    status, headers, _ = http("POST", hc.url + "/reopen")
    assert status == 200 and "Warning" not in headers


def test_etag_gives_304_only_while_passing(procs: Procs) -> None:
    hc = procs.hc()
    _, headers, _ = http("GET", hc.url + "/health_check.html")
    etag = headers["ETag"]
    assert http("GET", hc.url + "/health_check.html", {"If-None-Match": etag})[0] == 304
    assert http("GET", hc.url + "/health_check.html", {"If-None-Match": '"other"'})[0] == 200
    http("POST", hc.url + "/drain")
    # the state changed: the old tag no longer matches
    assert http("GET", hc.url + "/health_check.html", {"If-None-Match": etag})[0] == 200
    http("POST", hc.url + "/close-lb")
    closing = http("GET", hc.url + "/health_check.html")[1]["ETag"]
    # a failing probe is never turned into 304
    assert http("GET", hc.url + "/health_check.html", {"If-None-Match": closing})[0] == 503


def test_concurrent_drains_over_http_exactly_one_wins(procs: Procs) -> None:
    hc = procs.hc()
    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(lambda _: http("POST", hc.url + "/drain")[0], range(48)))
    assert sorted(set(statuses)) == [200, 409] and statuses.count(200) == 1


def test_one_logfmt_line_per_transition(procs: Procs) -> None:
    hc = procs.hc()
    for path in PATH_TO["CLOSED"]:
        http("POST", hc.url + path)
    http("POST", hc.url + "/close")  # refused: no transition, no line
    hc.stop()
    lines = hc.logfmt_lines("transition")
    assert [(line["from"], line["to"]) for line in lines] == [
        ("OPEN", "DRAINING"),
        ("DRAINING", "CLOSING"),
        ("CLOSING", "CLOSED"),
    ]
    assert all(line["ts"].endswith("+00:00") and "reason" in line for line in lines)


def test_openapi_is_served(procs: Procs) -> None:
    hc = procs.hc()
    status, headers, body = http("GET", hc.url + "/openapi.yaml")
    assert status == 200 and headers["Content-Type"].startswith("application/yaml")
    assert b"/health_check.html" in body and b"openapi: 3" in body


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HC_ADDR": "18180"}, "HC_ADDR='18180'"),
        ({"HC_ADDR": ":99999"}, "HC_ADDR=':99999'"),
        ({"HC_ADMIN_SOURCES": "localhost"}, "'localhost'"),
        ({"HC_ADMIN_SOURCES": " , "}, "allows no source"),
        ({"HC_LB_RISE": "0"}, "HC_LB_RISE='0'"),
    ],
)
def test_bad_config_exits_2_naming_the_value(env: dict[str, str], named: str) -> None:
    result = run_app("hc", env)
    assert result.returncode == 2
    assert named in result.stderr
