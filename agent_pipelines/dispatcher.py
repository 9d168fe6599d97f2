"""Fires a window run's executions at their exact due times, and its events as they arrive.

Dagster starts a run seconds after it is created and runs steps one after another, so sending
from the steps would land requests late and serialise a burst. A window run is therefore created
well ahead of its window (see `sensors.scheduler`); when it starts, this dispatcher starts a
background thread with its own event loop that, for each due instant, claims and renders the
due executions shortly before, sends them at the instant, and records the results. The task
steps then only collect the outcomes and materialize them. The same loop polls the events table
for the run's event subscribers, so an accepted event reaches its agent within a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

from agent_pipelines import event_loop
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.events import subscribers
from agent_pipelines.execution import Outcome, Planned, Prepared, TaskRunner
from agent_pipelines.timing import task_due_times
from agent_pipelines.triggers import Trigger
from resources.agent_resource import AgentConnection
from resources.agents.base import AgentCallError

#: Claim, render and count attempts this long before the due instant (longer for big bursts),
#: so that a busy machine (the previous window's run recording its results) cannot delay it.
PREPARE_LEAD_S = 1.0
PREPARE_LEAD_PER_TASK_S = 0.004
#: How often the events table is polled for the run's subscribers.
EVENT_POLL_S = 0.2
#: Results are written to the database in batches at most this far apart.
RECORD_EVERY_S = 0.1


class Dispatcher:
    """Runs in a window run; inert in any other run (`handles` is then always False)."""

    def __init__(
        self,
        runner: TaskRunner,
        *,
        window: tuple[dt.datetime, dt.datetime] | None,
        selected: Iterable[TaskSpec],
        paused: set[str],
        listen_for_events: bool,
    ) -> None:
        self.runner = runner
        self.window = window
        self.log = runner.log
        selected = list(selected)
        self._timed: dict[dt.datetime, list[Planned]] = defaultdict(list)
        self._event_tasks: list[TaskSpec] = []
        self._expected: dict[str, int] = defaultdict(int)  # timed executions per task
        if window is not None:
            start, end = window
            for task in selected:
                if task.name in paused:
                    continue
                for due in task_due_times(task, start, end):
                    self._timed[due].append(Planned(task, Trigger.scheduled(due), claim="insert"))
                    self._expected[task.name] += 1
            if listen_for_events:
                self._event_tasks = [t for t in selected if t.events and t.name not in paused]
        self._handled = set(self._expected) | {t.name for t in self._event_tasks}
        self._remaining = dict(self._expected)
        self._event_task_names = {t.name for t in self._event_tasks}
        self._outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self._changed = threading.Condition()
        self._finished: dict[str, threading.Event] = {name: threading.Event() for name in self._handled}
        self._pending_records: list[Outcome] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()

    # -- what the task steps see ----------------------------------------------------------------

    def handles(self, task_name: str) -> bool:
        return task_name in self._handled

    def stream(self, task_names: Iterable[str]) -> Iterator[Outcome]:
        """Outcomes of these tasks as they are recorded, until all of them are finished.

        Steps materialize while the window is still firing, instead of all at its end, when
        the next window's run is starting on the same two cores.
        """
        names = [n for n in task_names if n in self._handled]
        seen = dict.fromkeys(names, 0)
        while True:
            with self._changed:
                ready = [(n, self._outcomes[n][seen[n] :]) for n in names if len(self._outcomes[n]) > seen[n]]
                done = all(self._finished[n].is_set() for n in names)
                if not ready and not done:
                    self._changed.wait(timeout=1.0)
                    if not (self._thread and self._thread.is_alive()):
                        done = True
                    continue
            for name, outcomes in ready:
                seen[name] += len(outcomes)
                yield from outcomes
            if done and not ready:
                return

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._handled:
            return
        # A full garbage collection walks every object of the run's process (Dagster, the
        # definitions, ...) and stops all threads for 100 ms or more: the few p99 outliers of
        # the latency benchmark. Freezing what exists now keeps those objects out of every
        # later collection; collections are also held off around each due instant (below).
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self._main, name="agent-pipelines-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _main(self) -> None:
        try:
            event_loop.run(self._dispatch())
        except Exception:  # noqa: BLE001 - surface in the run's logs; steps then fall back
            self.log.exception("dispatcher failed")
        finally:
            self._finish_all()

    # -- the loop -------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        self._loop = asyncio.get_running_loop()
        agents = {p.task.agent for group in self._timed.values() for p in group} | {t.agent for t in self._event_tasks}
        async with contextlib.AsyncExitStack() as stack:
            connections: dict[str, AgentConnection | AgentCallError] = {}
            for name in sorted(agents):
                try:
                    connections[name] = await stack.enter_async_context(self.runner.agents[name].connect())
                except AgentCallError as error:
                    connections[name] = error
            sends: list[asyncio.Task[None]] = []
            recorder = asyncio.create_task(self._record_forever())
            jobs = [self._fire_timeline(connections, sends)]
            if self._event_tasks:
                jobs.append(self._poll_events(connections, sends))
            await asyncio.gather(*jobs)
            while sends:  # sends may add to the list while we wait
                pending, sends[:] = list(sends), []
                await asyncio.gather(*pending)
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
            await self._flush_records()
        self._finish_all()

    async def _fire_timeline(self, connections: dict[str, AgentConnection | AgentCallError], sends: list[asyncio.Task[None]]) -> None:
        for due in sorted(self._timed):
            if self._stopping.is_set():
                break
            planned = self._timed[due]
            lead = PREPARE_LEAD_S + PREPARE_LEAD_PER_TASK_S * len(planned)
            await self._sleep_until(due.timestamp() - lead)
            late = [p for p in planned if time.time() > due.timestamp() + p.task.misfire.grace]
            for item in late:
                self._collect(Outcome(item, skipped="past its grace period: left to the misfire policy"))
            fire = [p for p in planned if p not in late]
            prepared, failed = await asyncio.to_thread(self._claim_and_prepare, fire)
            for outcome in failed:
                self._collect(outcome)
            gc.disable()  # no collection pause between now and the requests leaving
            try:
                await self._sleep_until(due.timestamp())
                for item in prepared:
                    sends.append(asyncio.create_task(self._send(item, connections)))
                await asyncio.sleep(0.02)  # let the requests leave before collections may run again
            finally:
                gc.enable()

    def _claim_and_prepare(self, planned: Sequence[Planned]) -> tuple[list[Prepared], list[Outcome]]:
        allowed, skipped = self.runner.acquire(planned)
        prepared, failed = self.runner.prepare_many(allowed)
        return prepared, [*skipped, *failed]

    async def _send(self, prepared: Prepared, connections: dict[str, AgentConnection | AgentCallError]) -> None:
        outcome = await self.runner.send(prepared, connections[prepared.planned.task.agent])
        self._pending_records.append(outcome)
        if len(self._pending_records) >= 100:
            await self._flush_records()

    async def _poll_events(self, connections: dict[str, AgentConnection | AgentCallError], sends: list[asyncio.Task[None]]) -> None:
        assert self.window is not None
        start, end = self.window
        await self._sleep_until(start.timestamp())
        store = self.runner.store
        seq = await asyncio.to_thread(store.last_event_seq_before, start)
        final_poll = False
        while True:
            events = await asyncio.to_thread(store.events_after, seq, 500)
            planned: list[Planned] = []
            for event in events:
                if event.received_at >= end:
                    break
                seq = event.seq
                planned.extend(
                    Planned(task, Trigger("event", event.event_id), event=event, claim="insert")
                    for task in subscribers(self._event_tasks, event)
                )
            if planned:
                prepared, failed = await asyncio.to_thread(self._claim_and_prepare, planned)
                for outcome in failed:
                    self._collect(outcome)
                for item in prepared:
                    sends.append(asyncio.create_task(self._send(item, connections)))
            if final_poll or self._stopping.is_set():
                break
            if time.time() >= end.timestamp() + 1.0:
                final_poll = True  # one more look for events committed right at the boundary
            await asyncio.sleep(EVENT_POLL_S)

    # -- recording ------------------------------------------------------------------------------

    async def _record_forever(self) -> None:
        while True:
            await asyncio.sleep(RECORD_EVERY_S)
            await self._flush_records()

    async def _flush_records(self) -> None:
        if not self._pending_records:
            return
        batch, self._pending_records = self._pending_records, []
        await asyncio.to_thread(self.runner.record, batch)
        for outcome in batch:
            self._collect(outcome)

    def _collect(self, outcome: Outcome) -> None:
        name = outcome.planned.task.name
        with self._changed:
            self._outcomes[name].append(outcome)
            if outcome.planned.trigger.kind == "schedule" and name in self._remaining:
                self._remaining[name] -= 1
                if self._remaining[name] == 0 and name not in self._event_task_names:
                    self._finished[name].set()
            self._changed.notify_all()

    def _finish_all(self) -> None:
        with self._changed:
            for event in self._finished.values():
                event.set()
            self._changed.notify_all()

    async def _sleep_until(self, wall_time: float) -> None:
        """Sleep on the loop's monotonic clock; wake early enough to stop promptly."""
        while not self._stopping.is_set():
            remaining = wall_time - time.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 1.0))

