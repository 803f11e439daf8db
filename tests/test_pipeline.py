"""The pieces of the one collection pipeline that do not need a whole lab: log lines to
events, Envoy's gauge from its JSON stats (against a real Envoy), the journal's schema,
the registry as Ansible sees it, and a project that stands alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml

from helpers import ROOT, VENV_BIN, Procs, http
from lab.artifacts.journal import SCHEMA_PATH, Journal
from lab.collectors import envoy
from lab.collectors.podlogs import event_from_line
from lab.model import registry

TS = "2026-11-22T10:00:00.250Z"
TS_MS = 1795341600250.0


def test_an_hc_transition_becomes_an_event() -> None:
    line = f"ts={TS} level=info app=hc msg=transition from=OPEN to=DRAINING reason=/drain"
    assert event_from_line("igw-1", "hc", line) == {
        "ts_ms": TS_MS,
        "source": "hc",
        "kind": "transition",
        "pod": "igw-1",
        "from": "OPEN",
        "to": "DRAINING",
        "reason": "/drain",
    }


@pytest.mark.parametrize("container", ["hc", "prestop"])
def test_a_drain_script_line_is_a_prestop_step_whichever_stream_carried_it(
    container: str,
) -> None:
    # homelab: mirrored into hc's log (PID 1's stdout); local lab: the hook's own output
    line = f'ts={TS} app=graceful-drain level=info step=3 msg=poll active=2 elapsed=4 url="x y"'
    e = event_from_line("igw-1", container, line)
    assert e is not None
    assert (e["source"], e["kind"], e["step"], e["active"], e["msg"]) == (
        "prestop",
        "step",
        "3",
        "2",
        "poll",
    )


def test_pilot_agent_drain_lines_and_noise() -> None:
    e = event_from_line(
        "igw-1", "istio-proxy", f"ts={TS} app=pilot-agent msg=killing_envoy after_s=20"
    )
    assert e is not None and e["kind"] == "killing_envoy" and e["after_s"] == "20"
    assert (
        event_from_line("igw-1", "istio-proxy", f"ts={TS} app=pilot-agent msg=envoy_started")
        is None
    )
    assert event_from_line("igw-1", "hc", "[warning] not logfmt at all") is None
    assert event_from_line("b-1", "backend", f"ts={TS} app=backend msg=request status=200") is None


def test_active_from_stats_sums_and_unknown_is_none() -> None:
    stats = {"stats": [{"name": "a", "value": 2}, {"name": "b", "value": 1}]}
    assert envoy.active_from_stats(stats) == 3
    assert envoy.active_from_stats({"stats": []}) is None
    assert envoy.active_from_stats({}) is None


def test_the_gauge_of_a_real_envoy_sees_one_then_zero(procs: Procs) -> None:
    backend = procs.backend()
    proxy = procs.envoy(backend)
    regex = envoy.active_stat_regex(proxy.port)

    async def read() -> int | None:
        async with aiohttp.ClientSession() as session:
            fetch = envoy.http_fetcher(session, str(proxy.extra["admin"]), regex)
            return envoy.active_from_stats(await fetch())

    assert asyncio.run(read()) == 0
    slow = threading.Thread(target=http, args=("GET", f"{proxy.url}/sleep?seconds=2"))
    slow.start()
    time.sleep(0.7)
    assert asyncio.run(read()) == 1
    slow.join()
    assert asyncio.run(read()) == 0


@pytest.mark.parametrize("status", ["completed", "failed", "interrupted"])
def test_the_journal_follows_its_schema(status: str) -> None:
    journal = Journal("improved", "inflight", "quick", "local")
    journal.step("bring-up-lab", journal.start_ms, output={"pods": ["a"]})
    summary = None if status == "interrupted" else {"cut_in_flight": 0}
    doc = journal.document(status, summary, None if summary is None else journal.start_ms)
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert doc["hypothesis"]["met"] is (None if summary is None else True)
    with pytest.raises(ValueError, match="'done'"):
        journal.document("done", None, None)


def test_ansible_reads_the_registry(tmp_path: Path) -> None:
    playbook = tmp_path / "registry.yml"
    playbook.write_text(
        # no role: the filters are the project's (filter_plugins/, ansible.cfg)
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"{{ {'files': 'mode_files' | igw_registry,"
        " 'backend': 'haproxy_backend' | igw_registry} | to_json }}\"\n"
    )
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), str(playbook)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            "PATH": str(VENV_BIN) + ":/usr/bin:/bin",
            # one JSON document: the default callback wraps long lines
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        },
    )
    assert result.returncode == 0, result.stdout[-2000:]
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    msg = json.loads(tasks[-1]["hosts"]["localhost"]["msg"])
    assert msg["files"] == {name: m.manifest for name, m in registry.MODES.items()}
    assert msg["backend"] == registry.HAPROXY_BACKEND


# The folder beside a development checkout, and its files, spelt in pieces so that this
# test does not itself name them.
OUTSIDE = "shar" + "ed"
OUTSIDE_NAMES = (f"../{OUTSIDE}", f"{OUTSIDE}/istio", f"{OUTSIDE}/seeds", "FIND" + "INGS")


def test_the_project_stands_alone() -> None:
    """Nothing in the repository reads or names a folder beside it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    offenders = [
        f
        for f in files
        if (ROOT / f).is_file()
        and any(needle in (ROOT / f).read_text(errors="replace") for needle in OUTSIDE_NAMES)
    ]
    assert offenders == []


def test_names_the_standalone_parts_repeat_are_the_registry_s() -> None:
    # the HAProxy collector (copied to the workers) and the apps cannot import the lab
    from backend.server import REQUEST_ID_HEADER as BACKEND_HEADER
    from lab.collectors import haproxy as haproxy_collector

    assert BACKEND_HEADER == registry.REQUEST_ID_HEADER
    assert haproxy_collector.REQUEST_LOG_TAG == registry.HAPROXY_REQUEST_LOG_TAG


def test_access_log_and_backend_lines_become_hop_events() -> None:
    access = json.dumps(
        {"igw_access_log": "1", "request_id": "ab-000001", "response_code": 503}
        | {"response_flags": "UC", "upstream_host": "127.0.0.1:8080"}
    )
    e = event_from_line("gw-1", "istio-proxy", access)
    assert e is not None and (e["source"], e["kind"], e["pod"]) == ("envoy", "access_log", "gw-1")
    assert e["request_id"] == "ab-000001" and "igw_access_log" not in e
    line = f"ts={TS} level=info app=backend msg=request request_id=ab-000001 status=200 path=/"
    b = event_from_line("backend-1", "backend", line)
    assert b is not None and (b["kind"], b["request_id"], b["status"]) == (
        "request",
        "ab-000001",
        "200",
    )


def test_the_collector_reads_haproxy_request_lines() -> None:
    from lab.collectors import haproxy as haproxy_collector

    line = (
        "<134>Nov 22 14:00:00 haproxy[1]: igw_request rid=ab-000001 srv=worker1 st=502 "
        "term=DH Tq=1 Tw=0 Tc=0 Tr=-1 Ta=2855 bytes=0 retries=0"
    )
    fields = haproxy_collector.request_fields(line)
    assert fields is not None and fields["rid"] == "ab-000001" and fields["term"] == "DH"
    assert haproxy_collector.request_fields("Health check for server x/y failed") is None
    empty = haproxy_collector.request_fields("igw_request rid=- srv=<NOSRV> st=503")
    assert empty is not None and empty["rid"] == ""


def play_on_localhost(playbook: Path) -> subprocess.CompletedProcess[str]:
    """ansible-playbook against localhost with the project's roles."""
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "PATH": f"{VENV_BIN}:/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("haproxy_mode", "shutdown_sessions", "disable_on_404"),
    # the switches are set against the mode's settings: a mode's must win
    [
        ("current", True, False),
        ("improved", True, False),
        ("ordered", True, True),
        ("istio-native", True, False),
        ("", False, True),
    ],
)
def test_haproxy_config_takes_the_mode_s_lb_settings(
    tmp_path: Path, haproxy_mode: str, shutdown_sessions: bool, disable_on_404: bool
) -> None:
    if haproxy_mode:
        lb = registry.MODES[haproxy_mode].lb
        assert (lb.shutdown_sessions, lb.disable_on_404) == (shutdown_sessions, disable_on_404)
    out = tmp_path / "haproxy.cfg"
    role = ROOT / "roles" / "haproxy"
    play_vars = {
        # the role's documented defaults, then the case
        **yaml.safe_load((role / "defaults" / "main.yml").read_text()),
        "timing_profile": "quick",
        "haproxy_mode": haproxy_mode,
        "haproxy_shutdown_sessions": False,
        "haproxy_disable_on_404": True,
        "haproxy_servers": [{"name": "worker1", "address": "127.0.0.1"}],
    }
    template = {"src": str(role / "templates" / "haproxy.cfg.j2"), "dest": str(out)}
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": play_vars,
                    "roles": ["timing"],  # the budget and the registry's filter
                    "tasks": [{"ansible.builtin.template": template}],
                }
            ]
        )
    )
    result = play_on_localhost(playbook)
    assert result.returncode == 0, result.stdout[-2000:]
    cfg = out.read_text()
    assert ("on-marked-down shutdown-sessions" in cfg) is shutdown_sessions
    assert ("http-check disable-on-404" in cfg) is disable_on_404
    # the check goes where the mode says: hc's NodePort, or the gateway's status port
    status = haproxy_mode and registry.MODES[haproxy_mode].lb.check == "status"
    port, uri = (32021, "/healthz/ready") if status else (30180, "/health_check.html")
    assert f"check port {port} " in cfg and f"uri {uri} " in cfg


def test_recorded_image_tags_reach_the_rendered_manifests(tmp_path: Path) -> None:
    """The images role records content tags; a later play (a mode flip) reads them with
    playbooks/tasks/use-image-tags.yml and the manifests reference those images."""
    tags = tmp_path / "image-tags.yml"
    tags.write_text(
        "manifests_hc_image: localhost/igw-hc:0.1.0-0123456789ab\n"
        "manifests_backend_image: localhost/igw-backend:0.1.0-ba9876543210\n"
    )
    out = tmp_path / "manifests"
    playbook = tmp_path / "flip.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {
                        "image_tags_file_path": str(tags),
                        "manifests_dir": str(out),
                        "manifests_modes": ["ordered"],
                        "timing_profile": "seed",
                    },
                    "pre_tasks": [
                        {
                            "ansible.builtin.include_tasks": str(
                                ROOT / "playbooks" / "tasks" / "use-image-tags.yml"
                            )
                        }
                    ],
                    "roles": ["manifests"],
                }
            ]
        )
    )
    result = play_on_localhost(playbook)
    assert result.returncode == 0, result.stdout[-2000:]
    gateway = (out / "23-igw-ordered.yaml").read_text()
    backend = (out / "10-backend.yaml").read_text()
    assert "image: localhost/igw-hc:0.1.0-0123456789ab" in gateway
    assert "image: localhost/igw-backend:0.1.0-ba9876543210" in backend
