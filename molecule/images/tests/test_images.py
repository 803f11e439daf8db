"""Verify the converged images role: each image's own entrypoint runs (buildah, chroot
isolation, the host's network) as a non-root user and answers on a loopback port, and
the scenario's containerd lists both content tags in kubelet's namespace with a digest.
What this does not show: kubelet running them under a real CRI with the pods'
securityContext (docs/testing.md)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parents[1]))
VARS = yaml.safe_load((SCENARIO / "vars" / "main.yml").read_text())
TAGS = yaml.safe_load(Path(VARS["images_tags_file"]).read_text())
IMAGE_USER = "10001"
SmokeRun = Callable[..., subprocess.Popen[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, deadline_s: float = 30) -> str:
    """The body of a 200 answer, retried until the server listens."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def entrypoint(image: str) -> list[str]:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], check=True, capture_output=True
    ).stdout
    return list(json.loads(out)["OCIv1"]["config"]["Entrypoint"])


#: The read-only run: the root filesystem bound onto itself and made read-only in a
#: mount namespace of its own, then chroot as the image's user: what
#: `readOnlyRootFilesystem: true` and the image's USER give the pod, with no runtime.
READ_ONLY = (
    'root=$1; shift; mount --bind "$root" "$root"'
    ' && mount -o remount,bind,ro "$root"'
    f' && exec chroot --userspec={IMAGE_USER}:{IMAGE_USER} "$root" "$@"'
)


@pytest.fixture
def smoke_run(tmp_path: Path) -> Iterator[SmokeRun]:
    """Start a command of an image (its ENTRYPOINT unless `argv` is given) in a working
    container on the host's network, its output in a file of tmp_path: with `buildah
    run`, or on a read-only root (`read_only=True`). Stopped and removed after."""
    started: list[tuple[subprocess.Popen[bytes], str]] = []

    def run(
        image: str, env: dict[str, str], argv: list[str] | None = None, read_only: bool = False
    ) -> subprocess.Popen[bytes]:
        name = f"igw-smoke-{len(started)}-{os.getpid()}"
        subprocess.run(["buildah", "from", "--name", name, image], check=True, capture_output=True)
        command = argv or entrypoint(image)
        if read_only:
            root = subprocess.run(
                ["buildah", "mount", name], check=True, capture_output=True, text=True
            ).stdout.strip()
            full = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY]
            full += ["sh", root, *command]
            run_env: dict[str, str] | None = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
        else:
            flags = [f"--env={k}={v}" for k, v in env.items()]
            full = ["buildah", "run", "--isolation", "chroot", "--network", "host", *flags, name]
            full += ["--", *command]
            run_env = None
        with (tmp_path / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                full, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append((proc, name))
        return proc

    yield run
    for proc, name in started:
        with contextlib.suppress(ProcessLookupError):  # it may have ended already
            os.killpg(proc.pid, 9)
        proc.wait()
        subprocess.run(["buildah", "umount", name], capture_output=True)
        subprocess.run(["buildah", "rm", name], capture_output=True)


def uid_of_listener(port: int) -> str:
    """The owner of the socket listening on `port`: the user the image's process runs as."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return fields[7]
    raise AssertionError(f"nothing listens on {port}")


def test_hc_answers_ok_as_a_non_root_user(smoke_run: SmokeRun) -> None:
    port = free_port()
    smoke_run(TAGS["manifests_hc_image"], {"HC_ADDR": f"127.0.0.1:{port}"})
    assert get(f"http://127.0.0.1:{port}/health_check.html").strip() == "OK"
    assert uid_of_listener(port) == IMAGE_USER


def test_backend_sleeps_as_a_non_root_user(smoke_run: SmokeRun) -> None:
    port = free_port()
    smoke_run(TAGS["manifests_backend_image"], {"BIND_HOST": "127.0.0.1", "PORT": str(port)})
    assert get(f"http://127.0.0.1:{port}/sleep?seconds=0").strip() == "slept 0s"
    assert uid_of_listener(port) == IMAGE_USER


def test_both_serve_from_a_read_only_root(smoke_run: SmokeRun) -> None:
    hc_port, backend_port = free_port(), free_port()
    smoke_run(TAGS["manifests_hc_image"], {"HC_ADDR": f"127.0.0.1:{hc_port}"}, read_only=True)
    backend_env = {"BIND_HOST": "127.0.0.1", "PORT": str(backend_port)}
    smoke_run(TAGS["manifests_backend_image"], backend_env, read_only=True)
    assert get(f"http://127.0.0.1:{hc_port}/health_check.html").strip() == "OK"
    assert get(f"http://127.0.0.1:{backend_port}/sleep?seconds=0").strip() == "slept 0s"
    assert uid_of_listener(hc_port) == uid_of_listener(backend_port) == IMAGE_USER
    # and the root is really read-only: a write there fails (a write to /tmp too: the
    # pods mount nothing writable for these two containers)
    touch = ["/bin/sh", "-c", "touch /tmp/x"]
    write = smoke_run(TAGS["manifests_hc_image"], {}, touch, read_only=True)
    assert write.wait(30) != 0


def test_the_hc_image_has_curl_the_drain_script_and_the_compiled_parser() -> None:
    """curl and the script for the preStop; aiohttp's C HTTP parser (a wheel for the
    image's platform, not the pure-Python fallback) for the speed the lab measured."""
    image = TAGS["manifests_hc_image"]
    name = f"igw-smoke-files-{os.getpid()}"
    subprocess.run(["buildah", "from", "--name", name, image], check=True, capture_output=True)
    try:
        out = subprocess.run(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                name,
                "--",
                "sh",
                "-c",
                "command -v curl && test -x /opt/hc/graceful-drain.sh"
                " && /opt/igw/bin/python -c 'import aiohttp._http_parser, multidict._multidict'"
                " && id -u",
            ],
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split()[-1] == IMAGE_USER


def test_containerd_lists_both_images_for_kubelet_by_name_and_digest() -> None:
    out = subprocess.run(
        [
            "ctr",
            "--address",
            VARS["images_containerd_address"],
            "--namespace",
            "k8s.io",
            "images",
            "ls",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    for tag in (TAGS["manifests_hc_image"], TAGS["manifests_backend_image"]):
        assert tag in rows, out
        assert rows[tag][2].startswith("sha256:"), rows[tag]
