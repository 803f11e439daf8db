"""The local lab's HAProxy process: the haproxy role starts it (service manager
`process`, pidfile `<lab>/haproxy.pid`); whoever ends the lab stops it here, so that
the stop is written once for `make experiment`, a run by hand and an interrupted one.

    python -m runbook.localcluster.haproxy_process stop .lab/1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path

from .procfs import cmdline

PIDFILE = "haproxy.pid"
CONFIG = "haproxy.cfg"


def runs_lab_config(pid: int, lab_dir: Path) -> bool:
    """Whether process `pid` is an HAProxy of this lab's config (its master, or a worker
    the master forked: both carry the config's path in their command line)."""
    # the role names the config by an absolute path, symlinks kept or not
    configs = {os.path.abspath(lab_dir / CONFIG), str(lab_dir.resolve() / CONFIG)}
    command = cmdline(pid)
    return command is not None and any(c in command for c in configs)


def lab_haproxy_pids(lab_dir: Path) -> list[int]:
    """The pidfile's processes that still run this lab's config: a pid reused by an
    unrelated process since is never signalled."""
    try:
        pids = [int(p) for p in (lab_dir / PIDFILE).read_text().split()]
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if runs_lab_config(pid, lab_dir)]


def stop_lab_haproxy(lab_dir: Path) -> list[int]:
    """SIGTERM to the lab's HAProxy master (its workers follow it), then forget the
    pidfile. Returns the pids signalled; nothing to stop is not an error."""
    pids = lab_haproxy_pids(lab_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    (lab_dir / PIDFILE).unlink(missing_ok=True)
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="stop the local lab's HAProxy")
    parser.add_argument("action", choices=["stop"])
    parser.add_argument("lab_dir", type=Path)
    args = parser.parse_args(argv)
    stopped = stop_lab_haproxy(args.lab_dir)
    print(f"stopped={','.join(map(str, stopped)) or 'none'} lab_dir={args.lab_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
