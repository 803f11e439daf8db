#!/usr/bin/env python3
"""Poll HAProxy's runtime API and write each server state change as a JSON line.

Standard library only: the homelab playbook copies it to the workers with
ansible.builtin.script and runs it next to HAProxy's socket.

    haproxy_poll.py --socket /run/haproxy/admin.sock --seconds 300 --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def parse_show_stat(text: str, backend: str) -> dict[str, str]:
    """server name -> status (UP, DOWN, NOLB, MAINT, `UP 1/2`, ...) for one backend."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > st and f[px] == backend and f[sv] not in ("FRONTEND", "BACKEND"):
            out[f[sv]] = f[st]
    return out


def show_stat(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"show stat\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="igw_nodeports")
    p.add_argument("--interval", type=float, default=0.1)
    args = p.parse_args()
    lb = socket.gethostname()
    last: dict[str, str] = {}
    end = time.monotonic() + args.seconds
    with open(args.out, "x", buffering=1, encoding="utf-8") as out:
        while time.monotonic() < end:
            try:
                state = parse_show_stat(show_stat(args.socket), args.backend)
            except OSError as exc:
                out.write(
                    json.dumps(
                        {
                            "ts_ms": round(time.time() * 1000, 1),
                            "source": "haproxy",
                            "kind": "runtime_api_error",
                            "lb": lb,
                            "error": str(exc),
                        }
                    )
                    + "\n"
                )
                time.sleep(1)
                continue
            for server, status in state.items():
                if last.get(server) != status:
                    out.write(
                        json.dumps(
                            {
                                "ts_ms": round(time.time() * 1000, 1),
                                "source": "haproxy",
                                "kind": "server_state",
                                "lb": lb,
                                "server": server,
                                "status": status,
                                "previous": last.get(server),
                            }
                        )
                        + "\n"
                    )
            last = state
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
