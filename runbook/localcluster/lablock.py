"""A lab's addresses belong to the machine, not to a checkout: who may use a lab, and
who holds one of its addresses.

Lab N is the loopback network 127.(30+N).0.0/16 with fixed ports, whichever checkout
runs it. Two checkouts on one lab at once used to collide without a word: HAProxy's
SO_REUSEPORT let the second bind the first's frontend, the second lab's containers
died on `address already in use`, and the first lab's processes answered the second's
probes. So:

- `claim` takes the lab's machine-wide lock, `/run/lock/igw-lab-<N>.lock`, for as long
  as the returned file is open; it names the holder (checkout, pid, command) when
  another has it. A lock held by one of this process's ancestors is this command's own
  (`make experiment` holds its labs; the converge playbook and each run are its
  children).
- `address_holders` says which processes listen on a lab's addresses (from `ss`), so a
  refusal can name them.

    python -m runbook.localcluster.lablock check --lab-index 1 --lab-dir .lab/1

exits 0 when the lab is free for this command (the playbooks run it before HAProxy
starts), else 1 with one line naming the holder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from .haproxy_process import runs_lab_config
from .procfs import ancestors, cmdline
from .topology import Topology

#: Machine-wide: every checkout's labs share the machine's addresses.
LOCK_DIR = Path("/run/lock")
#: The checkout this code runs from, named in the locks it takes.
CHECKOUT = Path(__file__).resolve().parents[2]


class LabBusy(RuntimeError):
    """Another command holds the lab (the message names it)."""


def lock_path(index: int, lock_dir: Path = LOCK_DIR) -> Path:
    return lock_dir / f"igw-lab-{index}.lock"


def _describe(holder: str) -> str:
    try:
        doc = json.loads(holder)
        return f"{doc['command']} in {doc['checkout']} (pid {doc['pid']}, since {doc['started']})"
    except (ValueError, KeyError, TypeError):
        return holder or "(no details)"


class LockHeld(RuntimeError):
    """Another process holds the lock; the message is the record it wrote there."""


def hold(path: Path, record: dict[str, object]) -> IO[str]:
    """An exclusive lock on `path`, held while the returned file is open (the kernel
    drops it when the holder exits, however it exits), with `record` written in it for
    whoever is refused; LockHeld(the holder's record) when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise LockHeld(holder) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps(record) + "\n")
    f.flush()
    return f


def claim(
    index: int, command: str, checkout: Path = CHECKOUT, lock_dir: Path = LOCK_DIR
) -> IO[str] | None:
    """Lab `index`'s lock, held while the returned file is open; None when one of this
    process's ancestors holds it already (this command's own). LabBusy otherwise."""
    record = {
        "pid": os.getpid(),
        "checkout": str(checkout),
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        return hold(lock_path(index, lock_dir), record)
    except LockHeld as held:
        holder = str(held)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        if int(json.loads(holder)["pid"]) in {pid for pid, _ in ancestors()}:
            return None
    raise LabBusy(f"lab {index} is in use by {_describe(holder)}")


def claim_all(
    indices: list[int], command: str, checkout: Path = CHECKOUT, lock_dir: Path = LOCK_DIR
) -> list[IO[str]]:
    """Every lab's lock, or none of them (LabBusy naming the first one taken)."""
    held: list[IO[str]] = []
    try:
        for index in indices:
            f = claim(index, command, checkout, lock_dir)
            if f is not None:
                held.append(f)
    except LabBusy:
        for f in held:
            f.close()
        raise
    return held


#: `ss -Hltunp`: netid, state, recv-q, send-q, local address:port, peer, users
_SS_LINE = re.compile(r"^\S+\s+\S+\s+\S+\s+\S+\s+(?P<local>\S+)\s+\S+\s*(?P<users>.*)$")
_SS_USER = re.compile(r'\("(?P<name>[^"]*)",pid=(?P<pid>\d+),')


def address_holders(net: str) -> list[tuple[str, int | None, str]]:
    """(address:port, pid, command) of every TCP listener and UDP socket bound in the
    loopback network `net` (e.g. `127.31`); the pid is None when `ss` cannot tell."""
    listing = subprocess.run(
        ["ss", "-Hltunp"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    out = []
    for line in listing.splitlines():
        m = _SS_LINE.match(line.strip())
        if not m or not m["local"].startswith(net + "."):
            continue
        users = list(_SS_USER.finditer(m["users"])) or [None]
        for u in users:
            pid = int(u["pid"]) if u else None
            command = (cmdline(pid) or "") if pid else ""
            out.append((m["local"], pid, " ".join(command.split())))
    return out


def _who(pid: int | None, command: str) -> str:
    return f"pid {pid} ({command[:160]})" if pid is not None else "a process ss cannot name"


def address_taken(who: str, address: str, port: int) -> str:
    """The fault of `who` (a container, a NodePort) that cannot bind address:port,
    naming the process that listens there."""
    net = address.rsplit(".", 2)[0]
    holders = [
        _who(pid, command)
        for local, pid, command in address_holders(net)
        if local == f"{address}:{port}" and pid is not None
    ]
    holder = holders[0] if holders else _who(None, "")
    return (
        f"{who} cannot bind {address}:{port}: address already in use, held by {holder} "
        "(another lab on the same addresses?)"
    )


def check(index: int, lab_dir: Path, checkout: Path) -> str | None:
    """Why lab `index` cannot be brought up by this command now, or None: another
    command holds its lock, or a process other than this lab's own HAProxy (of the
    config in `lab_dir`: site.yml's second run reloads it) holds one of its addresses."""
    try:
        f = claim(index, "check", checkout)
    except LabBusy as exc:
        return str(exc)
    if f is not None:
        f.close()
    others = [
        (local, pid, cmd)
        for local, pid, cmd in address_holders(Topology(index).net)
        if pid is None or not runs_lab_config(pid, lab_dir)
    ]
    if not others:
        return None
    local, pid, cmd = others[0]
    who = _who(pid, cmd)
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return (
        f"lab {index}'s address {local} is held by {who}{more}, not by this lab's HAProxy "
        f"({lab_dir}): another checkout's lab, or one left running; stop it, or choose "
        "another lab (FIRST_LAB=, verify_lab_index=)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="is this lab free for this command?")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("--lab-index", type=int, required=True)
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, default=CHECKOUT)
    args = parser.parse_args(argv)
    why = check(args.lab_index, args.lab_dir, args.checkout.resolve())
    if why is None:
        print(f"lab {args.lab_index} is free")
        return 0
    print(why, file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
