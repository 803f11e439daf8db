"""The first reason a run must stop, from whichever writer, task or thread finds it
(a failed write to its artifacts, a lab fault): both runners end the run on it as
`failed`, naming the reason, and keep what was written."""

from __future__ import annotations

import asyncio
import threading


class RunStop:
    """The first reason this run must stop, from any thread or task: the run's task is
    cancelled once, and never once its cleanup has begun (that must finish)."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._cleaning_up = False
        #: why the run stops; None while all is well
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if not self._cleaning_up:
            self._task.cancel()

    def cleanup_begins(self) -> None:
        """From now on a reason is kept but stops nothing (call it from the run's task)."""
        self._cleaning_up = True
        if self.reason is not None:
            self._task.uncancel()
