"""What /proc says of a process: its command line and its ancestors. The lab's locks
(a lock an ancestor holds is the command's own), its HAProxy stop (a pid still running
the lab's config) and the runners (the ansible-playbook that started a run) ask."""

from __future__ import annotations

import os
from pathlib import Path


def cmdline(pid: int) -> str | None:
    """Process `pid`'s command line, its arguments joined by spaces; None when it is
    gone (or cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return os.fsdecode(raw.replace(b"\0", b" ")).strip()


def ancestors(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of each ancestor of `pid` (default: this process), nearest
    first, up to but not including PID 1."""
    out = []
    current = os.getpid() if pid is None else pid
    while True:
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return out
        if parent <= 1:
            return out
        command = cmdline(parent)
        if command is None:
            return out
        out.append((parent, command))
        current = parent
