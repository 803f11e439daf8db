#!/usr/bin/env python3
"""HAProxy's view of the gateway nodes, as events: server state from the runtime API
(`show stat`, polled, because its own clock has 1 s resolution) and the syslog lines of
`option log-health-checks`, received over UDP.

Standard library only: the local lab runs it as a subprocess, the homelab playbook
copies it to each worker and runs it next to that worker's HAProxy. It stops after
--seconds, or at once on SIGTERM or SIGINT, keeping every line written.

    haproxy.py --socket /run/haproxy/admin.sock --syslog 127.0.0.1:5514 \
        --lb worker1 --seconds 300 --out collected/haproxy-worker1.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# One place for the name (runbook/model/registry.py); repeated here only as the default of
# a script that must run without the package, and checked equal by the tests.
DEFAULT_BACKEND = "igw_nodeports"
# Likewise the tag of the per-request log line (the haproxy role's log-format).
REQUEST_LOG_TAG = "igw_request"

_HEALTH = re.compile(r"(Health check for (?:backup )?server \S+ .*)$")
_SERVER = re.compile(r"((?:Server|Backup server) \S+ is (?:UP|DOWN|going DOWN|NOLB)\b.*)$")


def parse_show_stat(text: str, backend: str) -> dict[str, str]:
    """server name -> status (UP, DOWN, NOLB, MAINT, `UP 1/2`, ...) for one backend."""
    if not text.startswith("# "):
        return {}
    rows = csv.DictReader(io.StringIO(text[2:]))
    return {
        row["svname"]: row["status"]
        for row in rows
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND")
    }


def runtime_command(path: str, command: str, timeout: float = 2.0) -> str:
    """One command over HAProxy's runtime API (the stats socket), its whole answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def show_stat(path: str, timeout: float = 2.0) -> str:
    return runtime_command(path, "show stat", timeout)


def request_fields(text: str) -> dict[str, str] | None:
    """The key=value fields of a per-request log line, or None for another line."""
    at = text.find(REQUEST_LOG_TAG + " ")
    if at < 0:
        return None
    fields = dict(
        token.split("=", 1) for token in text[at + len(REQUEST_LOG_TAG) :].split() if "=" in token
    )
    # HAProxy prints `-` for an empty capture (a request without an id)
    if fields.get("rid") in ("-", ""):
        fields["rid"] = ""
    return fields


def syslog_event(text: str) -> tuple[str, str] | None:
    """(kind, line) for a syslog datagram worth keeping, else None."""
    if match := _HEALTH.search(text):
        return "health_check_log", match.group(1)
    if match := _SERVER.search(text):
        return "server_log", match.group(1)
    return None


def _now_ms() -> float:
    return round(time.time() * 1000, 1)


class Collector:
    def __init__(
        self, write: Callable[[dict[str, Any]], None], lb: str, backend: str = DEFAULT_BACKEND
    ) -> None:
        self.write = write
        self.lb = lb
        self.backend = backend
        self.stop = threading.Event()

    def _emit(self, kind: str, **fields: Any) -> None:
        self.write({"ts_ms": _now_ms(), "source": "haproxy", "kind": kind, "lb": self.lb, **fields})

    def poll(self, socket_path: str, interval_s: float, until: float) -> None:
        last: dict[str, str] = {}
        while not self.stop.is_set() and time.monotonic() < until:
            try:
                state = parse_show_stat(show_stat(socket_path), self.backend)
            except OSError as exc:
                self._emit("runtime_api_error", error=str(exc))
                self.stop.wait(1)
                continue
            for server, status in state.items():
                if last.get(server) != status:
                    self._emit(
                        "server_state", server=server, status=status, previous=last.get(server)
                    )
            last = state
            self.stop.wait(interval_s)

    def receive(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode(errors="replace").strip()
            request = request_fields(text)
            if request is not None:
                self._emit("request_log", **request)
                continue
            found = syslog_event(text)
            if found:
                self._emit(found[0], line=found[1])


#: The exit code after a failed write of --out (its errno on stderr).
WRITE_FAILED = 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="HAProxy's runtime API socket")
    p.add_argument("--syslog", help="HOST:PORT to receive HAProxy's log lines on (UDP)")
    p.add_argument("--lb", help="this HAProxy's name in the run (inventory name)")
    p.add_argument("--seconds", type=float)
    p.add_argument("--out")
    p.add_argument("--backend", default=DEFAULT_BACKEND)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument(
        "--show-stat",
        action="store_true",
        help="print the backend's server states as JSON once and exit (the verify playbook)",
    )
    args = p.parse_args(argv)
    if args.show_stat:
        print(json.dumps(parse_show_stat(show_stat(args.socket), args.backend)))
        return 0
    missing = [f"--{k}" for k in ("lb", "seconds", "out") if getattr(args, k) is None]
    if missing:
        p.error(f"collecting needs {', '.join(missing)} (or --show-stat for one reading)")
    if not 0 < args.seconds <= 86400 or not 0.01 <= args.interval <= 10:
        p.error(f"--seconds {args.seconds} must be in (0, 86400], --interval in [0.01, 10]")
    with open(args.out, "x", buffering=1, encoding="utf-8") as out:
        lock = threading.Lock()
        failed: list[OSError] = []

        def write(record: dict[str, Any]) -> None:
            # a failed write (a full disk) ends the collector at once, saying so: what
            # it wrote before stays whole, and its caller stops the run (exit code)
            with lock:
                if failed:
                    return
                try:
                    out.write(json.dumps(record) + "\n")
                except OSError as exc:
                    failed.append(exc)
                    # closed now: its buffer's cut line would fail again at exit
                    with contextlib.suppress(OSError):
                        out.close()
                    print(
                        f"haproxy collector: cannot write {args.out}: errno={exc.errno} "
                        f"{exc.strerror}",
                        file=sys.stderr,
                        flush=True,
                    )
                    collector.stop.set()

        collector = Collector(write, args.lb, args.backend)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: collector.stop.set())
        receiver = None
        if args.syslog:
            host, _, port = args.syslog.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            receiver = threading.Thread(target=collector.receive, args=(sock,), daemon=True)
            receiver.start()
        print("collecting", flush=True)  # the caller may wait for this line
        collector.poll(args.socket, args.interval, time.monotonic() + args.seconds)
        collector.stop.set()
        # stopping either way: Python puts a handled signal's default action back while
        # it exits, so a stop that races this end would kill a finished collector
        # (-15, a failed run to its caller); an ignored one stays ignored
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if receiver is not None:
            receiver.join(1)
            sock.close()
        if failed:
            return WRITE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
