"""Run heartbeats: a run that executes tasks says every few seconds that it is alive.

Dagster's default run launcher cannot tell whether a run's process still exists: a run killed
with its machine stays STARTED until run monitoring's max runtime, and whatever it held (a
request in flight, a catch-up it took over) would wait that long. `task_scheduler_sensor` reads
these beats instead and settles a silent run within `SILENT_AFTER_S` (see `sensors.scheduler`).

Each beat also names its process (`host:pid:start`). The scheduler runs on the run workers'
machine when Dagster's default launcher is used (`up`, one machine): there a run whose process
no longer exists is dead at once, whatever its last beat says, and its due times are rescued
within seconds instead of after the silence timeout. Elsewhere (pods) only the timeout applies.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from agent_pipelines.process_identity import this_process
from agent_pipelines.store import StateStore

#: How often a live run beats.
BEAT_EVERY_S = 5.0
#: A run silent for this long is dead (generous: a loaded 2-core machine can starve a thread).
SILENT_AFTER_S = 45.0


class RunHeartbeat:
    """Context manager: beats for `run_id` from a daemon thread until exited."""

    def __init__(
        self, store: StateStore, run_id: str, log: logging.Logger | None = None, every_s: float = BEAT_EVERY_S
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.every_s = every_s
        self.worker = this_process()
        self.log = log or logging.getLogger(__name__)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="agent-pipelines-heartbeat", daemon=True)

    def __enter__(self) -> RunHeartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        # A last beat, not a deleted row: the run still ends its step and itself after carrying,
        # and must not pass for silent meanwhile. The scheduler prunes old beats.
        self._stop.set()
        self._thread.join(timeout=10)
        self._beat()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.every_s):
            self._beat()

    def _beat(self) -> None:
        try:
            self.store.beat(self.run_id, self.worker)
        except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one may succeed
            self.log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
