"""Shared test helpers: real processes on loopback ports, started per test and always
stopped; plain HTTP; the manifests rendered through Ansible. Tests import this module;
conftest.py only turns `Procs` into a fixture."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from applog import parse_logfmt
from runbook.localcluster.envoy_bootstrap import Upstream, envoy_args, gateway_bootstrap
from runbook.localcluster.topology import Topology
from runbook.model.registry import HAPROXY_BACKEND

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DRAIN_SCRIPT = ROOT / "apps" / "hc" / "graceful-drain.sh"
ISTIO_CRDS = ROOT / "tests" / "data" / "istio" / "gateway-virtualservice-crds.yaml"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logfmt_lines(self, msg: str) -> list[dict[str, str]]:
        """Parsed logfmt lines whose msg is `msg`."""
        return [f for f in map(parse_logfmt, self.log().splitlines()) if f.get("msg") == msg]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


class Procs:
    """Starts processes for one test; kills whatever is left at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        wait: bool = True,
    ) -> Proc:
        log_path = self.tmp / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.tmp,
                # a group of its own: cleanup takes its children too (pilot-agent's Envoy)
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path, port, host)
        self.started.append(proc)
        if wait:
            try:
                wait_port(host, port)
            except TimeoutError:
                proc.stop(signal.SIGKILL)
                raise AssertionError(f"{name} did not start:\n{proc.log()}") from None
        return proc

    def hc(self, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> Proc:
        port = free_port(host)
        return self.start(
            "hc",
            [sys.executable, "-m", "hc"],
            port,
            {"HC_ADDR": f"{host}:{port}", **(env or {})},
            host,
        )

    def backend(self, env: dict[str, str] | None = None, name: str = "backend") -> Proc:
        return self._backend_app("backend", name, env)

    def ticker(self, env: dict[str, str] | None = None, name: str = "ticker") -> Proc:
        """The backend's gRPC service (`python -m backend.ticker`)."""
        return self._backend_app("backend.ticker", name, env)

    def _backend_app(self, module: str, name: str, env: dict[str, str] | None) -> Proc:
        port = free_port()
        return self.start(
            name,
            [sys.executable, "-m", module],
            port,
            {"PORT": str(port), "BIND_HOST": "127.0.0.1", "HOSTNAME": name, **(env or {})},
        )

    def envoy(
        self,
        upstream: Proc,
        route_timeout_s: float = 30,
        drain_time_s: int = 30,
        upstream_idle_s: float | None = None,
    ) -> Proc:
        port, admin = free_port(), free_port()
        config = gateway_bootstrap(
            listen_host="127.0.0.1",
            listen_port=port,
            admin_host="127.0.0.1",
            admin_port=admin,
            upstreams=[Upstream(upstream.host, upstream.port)],
            route_timeout_s=route_timeout_s,
            upstream_idle_s=upstream_idle_s,
        )
        path = self.tmp / f"envoy-{port}.json"
        path.write_text(json.dumps(config))
        proc = self.start(
            "envoy", [str(VENV_BIN / "envoy"), *envoy_args(str(path), drain_time_s)], port
        )
        proc.extra["admin"] = f"http://127.0.0.1:{admin}"
        wait_port("127.0.0.1", admin)
        return proc

    def cleanup(self) -> None:
        for proc in reversed(self.started):
            # the whole group, even when its leader is gone: a failed test must not
            # leave a child (an Envoy under the pilot-agent stand-in) running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)


def http(
    method: str, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One request with the stdlib (no retries, no pooling): (status, headers, body)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def render_manifests(dest: Path, *extra_vars: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The manifests role through playbooks/render-manifests.yml, into `dest`."""
    argv = [
        str(VENV_BIN / "ansible-playbook"),
        "playbooks/render-manifests.yml",
        "-e",
        json.dumps({"manifests_dir": str(dest)}),
    ]
    for extra in extra_vars:
        argv += ["-e", json.dumps(extra)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_app(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m <module>` with extra env, to completion (for refusals at start-up)."""
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def require_root_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")


def lab_leftovers(artifacts: Path, labs: list[Topology]) -> list[str]:
    """Processes of the labs still alive: anything whose working folder is in a run
    directory (every pod runs there), a runner or HAProxy of one of the labs, or a
    listener on a lab's addresses."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(artifacts)) or any(
            f".lab/{lab.index}/haproxy.cfg" in cmdline
            or ("runbook.runners.local" in cmdline and f"--lab-index={lab.index} " in cmdline)
            for lab in labs
        ):
            found.append(f"{proc.name}: {cmdline[:120]}")
    listeners = subprocess.run(["ss", "-ltnuH"], capture_output=True, text=True).stdout
    found += [
        line for line in listeners.splitlines() if any(f" {lab.net}." in line for lab in labs)
    ]
    return found


def as_a_terminal_job() -> None:
    """preexec_fn: the exit signals at their defaults, as a command typed in a terminal
    has them, whatever the test runner inherited (under `nohup` SIGHUP is ignored, and
    in a shell's background job SIGINT too; the runners respect that)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


#: Debian's Chromium (`make setup` installs it), headless, touching no network: the
#: background-networking flags keep it from calling out at every start.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def screenshot(page: Path, out: Path, width: int, height: int) -> Any:
    """The first `width` x `height` pixels of `page` as headless Chromium draws them, as
    an RGB(A) array of floats in 0..1."""
    import matplotlib.image

    profile = out.parent / "chromium-profile"
    subprocess.run(
        [
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return matplotlib.image.imread(out)


def pixels_of(image: Any, colour: str, tolerance: float = 0.03) -> int:
    """How many pixels of `image` (screenshot's array) are `colour` (#rrggbb)."""
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    near = abs(image[..., 0] - rgb[0]) < tolerance
    for channel in (1, 2):
        near &= abs(image[..., channel] - rgb[channel]) < tolerance
    return int(near.sum())


def plain_haproxy_cfg(tmp: Path, lab: Topology) -> Path:
    """A small HAProxy config in front of `lab`'s workers, plain HTTP on 18080 (the
    runner tests that need no TLS), its admin socket at tmp/admin.sock, logs to 5514."""
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
    stats socket {tmp}/admin.sock mode 600 level admin
    log {lab.haproxy_ip}:5514 local0
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 500ms
frontend plain
    bind {lab.haproxy_ip}:18080
    default_backend {HAPROXY_BACKEND}
backend {HAPROXY_BACKEND}
    option httpchk
    http-check send meth GET uri /health_check.html ver HTTP/1.1 hdr Host t
    http-check expect status 200
    option log-health-checks
    default-server check port 30180 inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server worker1 {lab.node_ip(1)}:30080
    server worker2 {lab.node_ip(2)}:30080
""")
    return cfg


def local_runner_argv(tmp: Path, topology: Topology, manifests: Path, artifacts: Path) -> list[str]:
    """`python -m runbook.runners.local` on the lab `topology` behind plain_haproxy_cfg's
    HAProxy."""
    return [
        sys.executable,
        "-m",
        "runbook.runners.local",
        "--mode",
        "current",
        "--lab-index",
        str(topology.index),
        "--manifests",
        str(manifests),
        "--haproxy-socket",
        str(tmp / "admin.sock"),
        "--haproxy-url",
        f"http://{topology.haproxy_ip}:18080",
        "--syslog",
        f"{topology.haproxy_ip}:5514",
        "--artifacts",
        str(artifacts),
    ]


@contextlib.contextmanager
def local_run(
    tmp: Path, lab: Topology, artifacts: Path, *extra_args: str
) -> Iterator[subprocess.Popen[str]]:
    """A real `runbook.runners.local` run (mode current, the quick profile) on `lab`
    behind plain_haproxy_cfg's HAProxy, as a terminal job with its output on a pipe.
    Yields the runner; kills it if it is still running at the end, then stops HAProxy."""
    manifests = tmp / "manifests"
    render = render_manifests(manifests, {"timing_profile": "quick"})
    assert render.returncode == 0, render.stdout
    haproxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(plain_haproxy_cfg(tmp, lab))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = subprocess.Popen(
        [*local_runner_argv(tmp, lab, manifests, artifacts), *extra_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_a_terminal_job,
    )
    try:
        yield run
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        haproxy.terminate()
        haproxy.wait(10)


def helm_env(root: Path) -> dict[str, str]:
    """helm's config, cache and data under `root`, never the machine's."""
    return os.environ | {
        "HELM_CONFIG_HOME": str(root / "helm/config"),
        "HELM_CACHE_HOME": str(root / "helm/cache"),
        "HELM_DATA_HOME": str(root / "helm/data"),
    }


class ChartRepo:
    """A helm chart repository on loopback: charts packaged by `helm package`, indexed by
    `helm repo index`, served over HTTP from a thread until close()."""

    def __init__(self, helm: Path, root: Path) -> None:
        self.helm, self.root = helm, root
        self.served = root / "served"
        self.served.mkdir(parents=True)
        handler = functools.partial(SimpleHTTPRequestHandler, directory=str(self.served))
        handler.log_message = lambda *_: None  # type: ignore[attr-defined]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, *charts: Path, version: str | None = None) -> None:
        """Each chart folder packaged into the repository (at `version`, or its own),
        the index rewritten."""
        for chart in charts:
            given = ["--version", version] if version else []
            self.run("package", str(chart), "--destination", str(self.served), *given)
        self.run("repo", "index", str(self.served))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm), *args],
            env=helm_env(self.root),
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fill(folder: Path) -> None:
    """Write a file in `folder` until its filesystem has no byte left."""
    chunk = b"\0" * 65536
    with contextlib.suppress(OSError), (folder / "filler").open("wb", buffering=0) as f:
        while True:
            f.write(chunk)
    with contextlib.suppress(OSError), (folder / "filler-tail").open("wb", buffering=0) as f:
        while True:
            f.write(b"\0")


def make_experiment(artifacts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`make experiment`'s runner (runbook.runners.all) with `args`, into `artifacts`,
    one repeat; its exit code is the caller's to check."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.runners.all",
            "--repeats=1",
            f"--artifacts={artifacts}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
