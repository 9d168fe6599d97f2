"""A dispatcher inside a Dagster step: its own thread and event loop, and the step's thread
yielding what it publishes as soon as it is recorded.

The step's thread is where Dagster delivers a termination (the UI's Terminate, SIGTERM of the
run worker): the dispatcher is then stopped (nothing is sent early, requests in flight get a
short grace), everything it recorded is in the store, and whatever was not yet published is
reported later by the scheduler (see `republish_lost`). The run beats while it carries work.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.dispatcher import Dispatcher, Plan, Summary
from agent_pipelines.scheduling.heartbeat import RunHeartbeat
from agent_pipelines.scheduling.publication import Publication
from agent_pipelines.scheduling.run_log import never_raising
from agent_pipelines.store import StateStore

#: Requests in flight when a run is stopped get this long to answer before they count as unknown.
STOP_GRACE_S = 3.0
#: Published keys are written back at most this often.
MARK_PUBLISHED_EVERY_S = 0.5


class Carrier:
    """Use as `with Carrier(...) as carrier: for publication in carrier.publications(): ...`."""

    def __init__(self, store: StateStore, run_id: str, log: logging.Logger | Any, make_dispatcher: Any) -> None:
        self.store = store
        self.run_id = run_id
        self.log = never_raising(log)  # it logs while the database is down
        self._queue: queue.SimpleQueue[Publication | None] = queue.SimpleQueue()
        self.dispatcher: Dispatcher = make_dispatcher(self._queue.put)
        self.summary: Summary | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._heartbeat = RunHeartbeat(store, run_id, self.log)
        self._published: list[str] = []
        self._published_at = time.monotonic()

    def __enter__(self) -> Carrier:
        self._heartbeat.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            if self._thread is not None and self._thread.is_alive():
                # The step ends early (terminated, interrupted, failed): stop, then drain.
                self.log.warning(f"stopping the dispatcher ({kind.__name__ if kind else 'step ended'})")
                self.dispatcher.stop(STOP_GRACE_S)
                self._thread.join(STOP_GRACE_S + 30)
            self._flush_published(force=True)
        finally:
            self._heartbeat.__exit__(kind, error, tb)

    def start(self, plan: Plan) -> None:
        def main() -> None:
            try:
                self.summary = event_loop.run(self.dispatcher.run(plan))
            except BaseException as exc:  # noqa: BLE001 - reported by the step's thread
                self.error = exc
            finally:
                self._queue.put(None)

        self._thread = threading.Thread(target=main, name="agent-pipelines-dispatcher", daemon=True)
        self._thread.start()

    def publications(self) -> Iterator[Publication]:
        """Each publication as soon as it is recorded, until the dispatcher is done."""
        while True:
            try:
                publication = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._flush_published()
                continue
            if publication is None:
                break
            yield publication
            if publication.key:
                self._published.append(publication.key)
            self._flush_published()
        if self.error is not None:
            raise self.error

    def _flush_published(self, force: bool = False) -> None:
        if not self._published or (not force and time.monotonic() - self._published_at < MARK_PUBLISHED_EVERY_S):
            return
        keys, self._published = self._published, []
        self._published_at = time.monotonic()
        try:
            self.store.mark_published(sorted(set(keys)), self.dispatcher.clock.now())
        except Exception:  # noqa: BLE001 - they are published again later, which is harmless
            self.log.warning("could not note which executions were published", exc_info=True)
