"""A write to a run's artifacts that fails stops the run at once, saying so in one line.

A full disk (or a folder gone read-only) used to lose records without a word: the load
driver's last seconds were never written, then finalize died with a raw traceback and
the caller's result still said `running`. Every writer of a run (the collectors' JSON
lines, the driver's records, the containers' logs) reports its first failed write to
the run's one `WriteFailures`, which keeps the first and stops the run through the
callback the runner gave it; later writes to the same file are dropped, so what was
written before stays whole. The runner then ends the run as `failed`, naming the file
and the free space.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

#: The errors of a write that has nowhere to go: a full disk or quota, a file too
#: large, a filesystem gone read-only.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def is_a_failed_write(exc: OSError) -> bool:
    return exc.errno in NO_ROOM


def describe_write_failure(path: Path, exc: OSError) -> str:
    """`cannot write PATH: No space left on device (12.0 KiB free of 2.0 MiB there)`."""
    what = exc.strerror or type(exc).__name__
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return f"cannot write {path}: {what}"
    return f"cannot write {path}: {what} ({_size(usage.free)} free of {_size(usage.total)} there)"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class WriteFailures:
    """The first failed write of one run, from any thread, and what to do about it."""

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_first = on_first
        #: the first failure, as `describe_write_failure` says it; None while all is well
        self.first: str | None = None

    def stop_with(self, on_first: Callable[[str], None]) -> None:
        """What the first failure calls (the runner: stop the run)."""
        self._on_first = on_first

    def report(self, path: Path, exc: OSError) -> None:
        with self._lock:
            if self.first is not None:
                return
            self.first = describe_write_failure(path, exc)
            on_first = self._on_first
        if on_first is not None:
            on_first(self.first)


def written(write: Callable[[], None], path: Path, failures: WriteFailures) -> bool:
    """Run `write` (of `path`): False when it failed for want of room or rights, which
    `failures` is told (the run stops); any other error is raised."""
    try:
        write()
    except OSError as exc:
        if not is_a_failed_write(exc):
            raise
        failures.report(path, exc)
        return False
    return True


def write_lines_new(path: Path, lines: Iterable[str]) -> None:
    """A new file of `lines`, whole or not at all: written beside it, then linked into
    place (never over an existing one); a failed write leaves nothing half-written."""
    part = path.with_name(path.name + ".part")
    try:
        with part.open("x", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
        os.link(part, path)  # FileExistsError: an artifact is never overwritten
    finally:
        part.unlink(missing_ok=True)
