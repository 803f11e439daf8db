"""runbook.runners.signals: an exit signal and a vanished starter both end a run's task by
cancelling it, once, so that its cleanup runs to its end; real signals, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from runbook.localcluster.procfs import ancestors
from runbook.runners.signals import cancel_on_exit_signals, cancel_when_gone, exit_code


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_ancestors_start_with_the_parent() -> None:
    mine = ancestors()
    assert mine and mine[0][0] == os.getppid()
    assert all(pid > 1 for pid, _ in mine)
    child = sleeper()
    try:
        theirs = ancestors(child.pid)
        assert theirs[0][0] == os.getpid()
        assert "pytest" in theirs[0][1] or sys.argv[0] in theirs[0][1]
        assert [pid for pid, _ in theirs[1:]] == [pid for pid, _ in mine]
    finally:
        child.kill()
        child.wait()


async def cancelled_within(seconds: float, work) -> bool:
    task = asyncio.create_task(work())
    done, _ = await asyncio.wait([task], timeout=seconds)
    if not done:
        task.cancel()
        return False
    return task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)


def test_a_starter_that_exits_is_a_hangup() -> None:
    starter = sleeper()
    stopped_by: list[signal.Signals] = []

    async def run() -> None:
        cancel_when_gone([starter.pid], stopped_by, "test")
        await asyncio.sleep(20)

    async def scenario() -> bool:
        asyncio.get_running_loop().call_later(0.3, starter.kill)
        return await cancelled_within(5, run)

    try:
        assert asyncio.run(scenario())
    finally:
        starter.kill()
        starter.wait()
    assert stopped_by == [signal.SIGHUP]
    assert exit_code(stopped_by) == 128 + signal.SIGHUP


def test_a_starter_already_gone_stops_the_run_at_once() -> None:
    starter = sleeper()
    starter.kill()
    starter.wait()
    stopped_by: list[signal.Signals] = []

    async def run() -> None:
        cancel_when_gone([starter.pid], stopped_by, "test")
        await asyncio.sleep(20)

    assert asyncio.run(cancelled_within(2, run))
    assert stopped_by == [signal.SIGHUP]


def test_the_first_exit_signal_cancels_once_and_the_cleanup_runs_to_its_end() -> None:
    """A second signal (Ansible passes a Ctrl-C on, make signals too) during the cleanup
    is noted, not a second cancellation; a starter exiting then changes nothing."""
    starter = sleeper()
    stopped_by: list[signal.Signals] = []
    cleaned: list[str] = []

    async def run() -> None:
        cancel_on_exit_signals(stopped_by, "test")
        cancel_when_gone([starter.pid], stopped_by, "test")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(20)
        except asyncio.CancelledError:
            os.kill(os.getpid(), signal.SIGINT)
            starter.kill()
            await asyncio.sleep(0.5)  # cancelled again here, the cleanup would be cut
            cleaned.append("done")
            raise

    try:
        assert asyncio.run(cancelled_within(5, run))
    finally:
        starter.kill()
        starter.wait()
    assert stopped_by == [signal.SIGTERM]
    assert cleaned == ["done"]
    assert exit_code(stopped_by) == 128 + signal.SIGTERM


def test_a_signal_inherited_as_ignored_stays_ignored() -> None:
    """`nohup` (SIGHUP ignored) outlives the terminal; the runners respect it."""
    stopped_by: list[signal.Signals] = []
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def run() -> None:
        cancel_on_exit_signals(stopped_by, "test")
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.3)

    try:
        assert not asyncio.run(cancelled_within(2, run))
    finally:
        signal.signal(signal.SIGHUP, before)
    assert stopped_by == []
