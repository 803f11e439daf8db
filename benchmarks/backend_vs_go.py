"""Our backend against the seed's Go backend, in the same run: short-request throughput
(wrk) and memory per in-flight request.

    .venv/bin/python benchmarks/backend_vs_go.py [--rounds 2] [--seconds 10] [--inflight 2000]

Builds `benchmarks/go_backend` with Go (Debian's golang-go) when `go` is on PATH, and
says so when it is not (then only ours is measured). Each server runs alone on a
loopback port, its one logfmt line per request written to a file. Throughput: wrk, one
thread, 50 keep-alive connections, `/sleep?seconds=0`, after a 2 s warm-up; the servers
alternate (ours, Go, ours, Go, ...) and the medians are compared. Memory: RSS growth
while --inflight `/sleep?seconds=10` are held, per held request. Prints one JSON object;
record it in benchmarks/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from backend_capacity import hold_inflight
from common import free_port, raise_fd_limit, wait_ready, wrk

HERE = Path(__file__).parent


def build_go(workdir: Path) -> Path | None:
    go = shutil.which("go")
    if go is None:
        print("go is not on PATH (apt install golang-go): measuring ours only", file=sys.stderr)
        return None
    out = workdir / "gobackend"
    env = {**os.environ, "GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath")}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=HERE / "go_backend", env=env, check=True)
    return out


class Server:
    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name, self.argv, self.workdir = name, argv, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "BIND_HOST": "127.0.0.1", "SHUTDOWN_TIMEOUT": "5"}
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(self.url, "/sleep?seconds=0"))  # Go's has no `/`
        return self

    def __exit__(self, *_: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--inflight", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not on PATH: apt install wrk", file=sys.stderr)
        return 2
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="igw-bench-") as tmp:
        workdir = Path(tmp)
        servers = {"python": [sys.executable, "-m", "backend"]}
        go = build_go(workdir)
        if go is not None:
            servers["go"] = [str(go)]
        rates: dict[str, list[float]] = {name: [] for name in servers}
        errors: dict[str, list[str]] = {name: [] for name in servers}
        for r in range(args.rounds):
            for name, argv in servers.items():
                with Server(name, argv, workdir) as server:
                    rate, err = wrk(f"{server.url}/sleep?seconds=0", args.seconds, 2)
                rates[name].append(rate)
                if err:
                    errors[name].append(err)
                print(f"round {r + 1}: {name} {rate:,.0f} req/s {err}", file=sys.stderr)
        memory = {}
        for name, argv in servers.items():
            with Server(name, argv, workdir) as server:
                assert server.proc is not None
                time.sleep(1)
                memory[name] = asyncio.run(
                    hold_inflight(server.url, server.proc.pid, args.inflight, 10)
                )
        lines = {name: sum(1 for _ in (workdir / f"{name}.log").open("rb")) for name in servers}
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "wrk": f"-t1 -c50 -d{args.seconds}s /sleep?seconds=0, after a 2 s warm-up",
        "rates": rates,
        "median_per_second": {n: round(statistics.median(v)) for n, v in rates.items()},
        "errors": errors,
        "log_lines_written": lines,
        "memory": memory,
    }
    if "go" in rates:
        med = report["median_per_second"]
        assert isinstance(med, dict)
        report["throughput_ratio_python_to_go"] = round(med["python"] / med["go"], 3)
        report["memory_ratio_python_to_go"] = round(
            float(memory["python"]["kib_per_inflight_request"])  # type: ignore[arg-type]
            / float(memory["go"]["kib_per_inflight_request"]),  # type: ignore[arg-type]
            3,
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
