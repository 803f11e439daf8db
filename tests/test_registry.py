"""runbook.model.registry: the one registry as Ansible sees it (filter_plugins/igw.py), the
names the standalone parts repeat, and a project that stands alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import ROOT, VENV_BIN
from runbook.model import registry


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
    from runbook.collectors import haproxy as haproxy_collector

    assert BACKEND_HEADER == registry.REQUEST_ID_HEADER
    assert haproxy_collector.REQUEST_LOG_TAG == registry.HAPROXY_REQUEST_LOG_TAG
