"""The one place the runners handle the signals that end a command.

Ctrl-C in a terminal (SIGINT), a CI timeout, `timeout(1)` or systemd (SIGTERM) and a
closing terminal (SIGHUP) all mean the same thing: stop, keep what was recorded, leave
no process behind, then exit. Each entry point runs its work as one asyncio task;
`cancel_on_exit_signals` turns the first of these signals into that task's
cancellation, so its `finally` and `except CancelledError` blocks do the cleanup. A
repeated signal is noted and ignored: cancelling the cleanup itself would leave the
lab running.

A command that starts a run and dies without passing a signal on counts as a hangup:
Ansible forwards SIGINT and SIGTERM to its tasks' commands (each in a session of its
own) but not SIGHUP, so a run by hand whose terminal closed would otherwise go on
without it. `cancel_when_gone` watches such processes (Linux pidfds).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

#: The signals that end a run, handled alike.
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def cancel_on_exit_signals(stopped_by: list[signal.Signals], who: str) -> None:
    """From now on, the first exit signal cancels the current task and is appended to
    `stopped_by`; later ones only say the cleanup is under way. Call it from the task.
    A signal this process inherited as ignored stays ignored: `nohup make experiment`
    outlives its terminal, and a shell's background job ignores Ctrl-C, as they ask."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("cancel_on_exit_signals must be called from an asyncio task")

    def on_signal(sig: signal.Signals) -> None:
        if stopped_by:
            print(f"{who}: {sig.name}: already stopping, cleaning up", file=sys.stderr)
            return
        stopped_by.append(sig)
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in EXIT_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_IGN:
            continue
        loop.add_signal_handler(sig, on_signal, sig)


def exit_code(stopped_by: list[signal.Signals]) -> int:
    """The shell's convention for a command ended by a signal: 128 + its number."""
    return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)


def cancel_when_gone(pids: list[int], stopped_by: list[signal.Signals], who: str) -> None:
    """From now on, the exit of any of `pids` is a hangup: the current task is cancelled
    and SIGHUP appended to `stopped_by`, unless an exit signal came first. Call it from
    the task."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("cancel_when_gone must be called from an asyncio task")
    loop = asyncio.get_running_loop()

    def on_gone(pid: int, fd: int | None) -> None:
        if fd is not None:
            loop.remove_reader(fd)
            os.close(fd)
        if stopped_by:
            return
        print(f"{who}: pid {pid}, which started this run, is gone: stopping", file=sys.stderr)
        stopped_by.append(signal.SIGHUP)
        task.cancel()

    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            loop.call_soon(on_gone, pid, None)
            continue
        # a pidfd is readable once its process has exited
        loop.add_reader(fd, on_gone, pid, fd)
