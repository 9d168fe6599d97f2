"""A run's heartbeat on its in-flight executions, so a run that dies is noticed in seconds.

Dagster's default run launcher cannot tell whether a run's process is alive: a run killed with
its machine stays STARTED until run monitoring's max runtime. While a run lives, this thread
refreshes `updated_at` of the executions it has in flight; `task_scheduler_sensor` fails those
that stop being refreshed (see `StateStore.interrupt_silent`), so history shows the truth and
nothing waits on them forever.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from agent_pipelines.store import StateStore

#: How often a live run refreshes its in-flight executions.
BEAT_EVERY_S = 5.0
#: In-flight executions not refreshed for this long belong to a dead run.
SILENT_AFTER_S = 30.0


class RunHeartbeat:
    """Context manager: beats for `run_id` in a daemon thread until exited."""

    def __init__(self, store: StateStore, run_id: str, log: logging.Logger | None = None, every_s: float = BEAT_EVERY_S) -> None:
        self.store = store
        self.run_id = run_id
        self.every_s = every_s
        self.log = log or logging.getLogger(__name__)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="agent-pipelines-heartbeat", daemon=True)

    def __enter__(self) -> RunHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.store.beat(self.run_id)
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one may succeed
                self.log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
