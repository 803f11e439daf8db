"""The haproxy role on localhost: its config carries each mode's LB settings, and the
manifests role takes the image tags the images role recorded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, VENV_BIN
from runbook.collectors.haproxy_config import haproxy_source
from runbook.model import registry


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
    ("haproxy_mode", "shutdown_sessions", "disable_on_404", "source", "protocol"),
    # the switches are set against the mode's settings: a mode's must win
    [
        ("current", True, False, "", "h1"),
        ("improved", True, False, "127.0.0.9", "h2"),
        ("ordered", True, True, "", "h2"),
        ("istio-native", True, False, "", "h1"),
        ("", False, True, "127.0.0.9", "h2"),
    ],
)
def test_haproxy_config_takes_the_mode_s_lb_settings(
    tmp_path: Path,
    haproxy_mode: str,
    shutdown_sessions: bool,
    disable_on_404: bool,
    source: str,
    protocol: str,
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
        "haproxy_source_address": source,
        "haproxy_server_protocol": protocol,
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
    # where the server connections leave from, as the lab's premise check reads it back
    assert haproxy_source(cfg) == (source or None)
    # HTTP/2 to the gateways: the traffic only; WebSockets and the checks stay HTTP/1.1
    servers = [line for line in cfg.splitlines() if line.strip().startswith("server ")]
    assert servers and all(
        line.endswith(" proto h2 ws h1 check-proto h1") is (protocol == "h2") for line in servers
    )


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
