"""The one place the runners handle the signals that end a command.

Ctrl-C in a terminal (SIGINT), a CI timeout, `timeout(1)` or systemd (SIGTERM) and a
closing terminal (SIGHUP) all mean the same thing: stop, keep what was recorded, leave
no process behind, then exit. Each entry point runs its work as one asyncio task;
`cancel_on_exit_signals` turns the first of these signals into that task's
cancellation, so its `finally` and `except CancelledError` blocks do the cleanup. A
repeated signal is noted and ignored: cancelling the cleanup itself would leave the
lab running.
"""

from __future__ import annotations

import asyncio
import signal
import sys

#: The signals that end a run, handled alike.
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def cancel_on_exit_signals(stopped_by: list[signal.Signals], who: str) -> None:
    """From now on, the first exit signal cancels the current task and is appended to
    `stopped_by`; later ones only say the cleanup is under way. Call it from the task."""
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
        loop.add_signal_handler(sig, on_signal, sig)


def exit_code(stopped_by: list[signal.Signals]) -> int:
    """The shell's convention for a command ended by a signal: 128 + its number."""
    return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
