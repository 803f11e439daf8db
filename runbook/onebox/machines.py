"""A onebox node's life: boot it with systemd under systemd-nspawn, and stop it.

    python -m runbook.onebox.machines start --name master1 --root R --netns onebox-master1 \
        --pidfile P --log L [--bind SRC:DST ...] [--bind-ro SRC:DST ...] [--timeout 120]
    python -m runbook.onebox.machines stop --name master1 --pidfile P [--timeout 30] \
        [--clean-cgroups]
    python -m runbook.onebox.machines clean-cgroups --name master1 --pidfile P

Why these nspawn settings (each was needed on this kind of machine, which has no
systemd as PID 1 and cgroup v1):
- `--keep-unit --register=no`: there is no host systemd or machined to register with.
- `SYSTEMD_NSPAWN_API_VFS_WRITABLE=1`: /proc/sys and /sys writable inside, for the
  node's sysctls (forwarding, bridge netfilter) and kube-proxy's.
- a cgroup of its own per node and controller (`onebox-<node>` under the starter's),
  which nspawn is started in and which is bound at /run/hostcg/<c>: the node binds
  them over its read-only /sys/fs/cgroup/<c> at boot (onebox-cgroups.service), or runc
  fails. nspawn roots the node's cgroup namespace at that same folder, so the paths
  kubelet and runc read in /proc/self/cgroup and the folders they write agree; the
  three nodes' kubepods stay apart; and `clean-cgroups` removes all a node made.
- `--capability=all` and `--system-call-filter=@keyring bpf`: containerd and runc
  inside need them (runc joins a session keyring per container).
- the host's /dev/kmsg read-only: kubelet's OOM watcher opens it and will not start
  without it.

Stopping sends nspawn SIGTERM, which powers the node off in order (its systemd stops
kubelet, containerd and the containers). Past the deadline the node's init is killed,
which ends every process in its PID namespace and the namespaces nested in it.
Both print one JSON line: what was done and how long it took.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: The host's cgroup v1 controllers bound into every node.
CGROUP_CONTROLLERS = ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids")
HOST_CGROUP_DIR = "/run/hostcg"

#: What `systemctl is-system-running` says of a node that finished booting.
BOOTED = {"running"}
#: What it says of one that booted with a unit failed: an error, naming the units.
BOOTED_WITH_FAILURES = {"degraded"}
#: What it says on the way.
BOOTING = {"initializing", "starting", "offline", "unknown", ""}


class MachineError(RuntimeError):
    """A node that did not boot or stop as asked; the message says what was seen."""


@dataclass(frozen=True)
class Machine:
    name: str
    root: Path
    netns: str
    pidfile: Path
    log: Path
    binds: tuple[str, ...] = ()
    binds_ro: tuple[str, ...] = ()


def cgroup_dirs(
    proc_self_cgroup: str, controllers: tuple[str, ...] = CGROUP_CONTROLLERS
) -> dict[str, str]:
    """Each controller's folder of the process whose /proc/self/cgroup this is.

    A v1 line reads `4:memory:/process_api/0a1b`; co-mounted controllers share a line
    (`2:cpu,cpuacct:/`) but keep a folder each under /sys/fs/cgroup here.
    """
    dirs: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            if controller in controllers:
                dirs[controller] = f"/sys/fs/cgroup/{controller}{parts[2].rstrip('/')}"
    missing = [c for c in controllers if c not in dirs]
    if missing:
        raise MachineError(f"no cgroup v1 hierarchy for {missing} in /proc/self/cgroup")
    return dirs


def node_cgroup_dirs(starter: dict[str, str], name: str) -> dict[str, str]:
    """The node's own cgroup per controller, under the starter's."""
    return {c: f"{d}/onebox-{name}" for c, d in starter.items()}


def cgroups_record(m: Machine) -> Path:
    return m.pidfile.with_name("cgroups.json")


def enter_cgroups(dirs: dict[str, str]) -> None:
    """Create the node's cgroups and move this process into them (before nspawn runs)."""
    for controller, d in dirs.items():
        path = Path(d)
        path.mkdir(exist_ok=True)
        if controller == "cpuset":
            # a v1 cpuset cgroup takes no task until it has CPUs and memory nodes
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (path / knob).read_text().strip():
                    (path / knob).write_text((path.parent / knob).read_text())
        (path / "cgroup.procs").write_text(f"{os.getpid()}\n")


def nspawn_argv(m: Machine, cgroups: dict[str, str]) -> list[str]:
    argv = [
        "systemd-nspawn",
        f"--directory={m.root}",
        f"--machine={m.name}",
        f"--hostname={m.name}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{m.netns}",
        "--capability=all",
        "--system-call-filter=@keyring bpf",
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--bind-ro=/dev/kmsg",
    ]
    argv += [f"--bind={cgroups[c]}:{HOST_CGROUP_DIR}/{c}" for c in CGROUP_CONTROLLERS]
    argv += [f"--bind={b}" for b in m.binds]
    argv += [f"--bind-ro={b}" for b in m.binds_ro]
    return argv


def nspawn_environment() -> dict[str, str]:
    return os.environ | {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"}


def boot_finished(state: str) -> bool:
    """True when booted, False while booting; a failed or stopping boot raises."""
    state = state.strip()
    if state in BOOTED:
        return True
    if state in BOOTING:
        return False
    if state in BOOTED_WITH_FAILURES:
        raise MachineError("booted with failed units")
    raise MachineError(f"systemd says {state!r}")


def is_nspawn_of(cmdline: bytes, name: str) -> bool:
    """Whether a /proc/<pid>/cmdline is the nspawn of this node (not a reused pid)."""
    args = cmdline.split(b"\0")
    return (
        bool(args) and args[0].endswith(b"systemd-nspawn") and f"--machine={name}".encode() in args
    )


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def running_nspawn(m: Machine) -> int | None:
    """The pid of this node's nspawn if it runs, else None."""
    pid = read_pid(m.pidfile)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return pid if is_nspawn_of(cmdline, m.name) else None


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def node_init(nspawn_pid: int) -> int | None:
    """The node's PID 1 as the host sees it: the systemd among nspawn's descendants."""
    queue = children(nspawn_pid)
    while queue:
        pid = queue.pop(0)
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return pid
        except FileNotFoundError:
            continue
        queue += children(pid)
    return None


def in_node(init_pid: int, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--target={init_pid}", "--mount", "--uts", "--ipc", "--net", "--pid", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failed_units(init_pid: int) -> str:
    out = in_node(init_pid, "systemctl", "--failed", "--no-legend", "--plain").stdout
    return ", ".join(line.split()[0] for line in out.splitlines() if line.strip()) or "none listed"


def start(m: Machine, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    pid = running_nspawn(m)
    changed = pid is None
    if pid is None:
        m.pidfile.parent.mkdir(parents=True, exist_ok=True)
        cgroups = node_cgroup_dirs(cgroup_dirs(Path("/proc/self/cgroup").read_text()), m.name)
        cgroups_record(m).write_text(json.dumps(cgroups, indent=1) + "\n", encoding="utf-8")
        with m.log.open("ab") as log:
            proc = subprocess.Popen(
                nspawn_argv(m, cgroups),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=nspawn_environment(),
                cwd="/",
                # A daemon: its own session, so the caller's Ctrl-C does not reach it.
                start_new_session=True,
                preexec_fn=lambda: enter_cgroups(cgroups),
            )
        pid = proc.pid
        m.pidfile.write_text(f"{pid}\n", encoding="ascii")
    deadline = started + timeout
    state = ""
    while True:
        init = node_init(pid)
        if init is not None:
            state = in_node(init, "systemctl", "is-system-running").stdout.strip()
            try:
                if boot_finished(state):
                    break
            except MachineError as e:
                raise MachineError(f"{m.name}: {e} ({failed_units(init)}); log: {m.log}") from e
        if running_nspawn(m) is None:
            raise MachineError(f"{m.name}: systemd-nspawn exited while booting; log: {m.log}")
        if time.monotonic() > deadline:
            raise MachineError(
                f"{m.name}: not booted after {timeout:.0f}s (systemd says {state!r}); log: {m.log}"
            )
        time.sleep(0.5)
    return {
        "name": m.name,
        "changed": changed,
        "pid": pid,
        "init_pid": init,
        "seconds": round(time.monotonic() - started, 1),
    }


def wait_gone(pid: int, until: float) -> bool:
    while time.monotonic() < until:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Reap it if it is ours; otherwise only wait.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    return False


def stop(m: Machine, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    pid = running_nspawn(m)
    if pid is None:
        m.pidfile.unlink(missing_ok=True)
        return {"name": m.name, "changed": False, "how": "not running", "seconds": 0.0}
    init = node_init(pid)
    os.kill(pid, signal.SIGTERM)
    how = "powered off"
    if not wait_gone(pid, started + timeout):
        how = f"killed after {timeout:.0f}s"
        for target in (init, pid):
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        if not wait_gone(pid, time.monotonic() + 10):
            raise MachineError(f"{m.name}: systemd-nspawn {pid} still there after SIGKILL")
    m.pidfile.unlink(missing_ok=True)
    return {
        "name": m.name,
        "changed": True,
        "how": how,
        "seconds": round(time.monotonic() - started, 1),
    }


def clean_cgroups(m: Machine) -> dict[str, object]:
    """Remove the node's cgroups, deepest first; one still holding a process is an error."""
    record = cgroups_record(m)
    if not record.is_file():
        return {"name": m.name, "changed": False, "removed": 0}
    if running_nspawn(m) is not None:
        raise MachineError(f"{m.name}: still running; stop it before removing its cgroups")
    removed, busy = 0, []
    for d in json.loads(record.read_text(encoding="utf-8")).values():
        top = Path(d)
        if not top.is_dir():
            continue
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            removed += try_rmdir(sub, busy)
        removed += try_rmdir(top, busy)
    if busy:
        raise MachineError(f"{m.name}: cgroups still in use: {', '.join(busy[:5])}")
    record.unlink()
    return {"name": m.name, "changed": removed > 0, "removed": removed}


def try_rmdir(path: Path, busy: list[str]) -> int:
    try:
        path.rmdir()
    except OSError:
        busy.append(str(path))
        return 0
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "clean-cgroups"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--netns")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    parser.add_argument("--bind-ro", action="append", default=[], metavar="SRC:DST")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--clean-cgroups", action="store_true", help="stop: then clean-cgroups")
    args = parser.parse_args(argv)
    if args.action == "start" and (args.root is None or args.netns is None or args.log is None):
        parser.error("start needs --root, --netns and --log")
    if args.timeout <= 0:
        parser.error(f"--timeout {args.timeout}: must be more than 0 seconds")
    m = Machine(
        args.name,
        args.root or Path("/"),
        args.netns or "",
        args.pidfile,
        args.log or Path("/dev/null"),
        tuple(args.bind),
        tuple(args.bind_ro),
    )
    try:
        if args.action == "start":
            result = start(m, args.timeout)
        elif args.action == "stop":
            result = stop(m, args.timeout)
            if args.clean_cgroups:
                cleaned = clean_cgroups(m)
                result |= {
                    "changed": bool(result["changed"] or cleaned["changed"]),
                    "cgroups_removed": cleaned["removed"],
                }
        else:
            result = clean_cgroups(m)
    except MachineError as e:
        print(f"onebox machine: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
