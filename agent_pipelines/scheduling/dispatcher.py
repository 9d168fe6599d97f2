"""The dispatcher: sends every execution a run carries at its instant, and follows each one up.

Dagster starts a run seconds after it is created and has minute-granular schedules, so the runs
that carry scheduled work are created ahead of time (see `scheduler`) and this dispatcher, inside
the run, does what Dagster cannot: it waits on a timeline of due instants and sends each
execution at its instant, never before. Everything that follows an answer happens here too, at
its own time rather than at a run's end: a retry at its own delay, the downstream task of a
workflow as soon as its upstream answered (reading exactly that answer), events as they arrive.

Each instant goes through three steps: shortly before it, the executions are claimed and their
prompts rendered (a worker thread: database and templates); just before it, they are marked
`sending` in one statement; at the instant, the requests leave. An agent that cannot keep up
gets no more requests than its learned limit: the rest wait in the platform's queue, ordered and
each with a deadline (`admission`, `load`). Answers are handed to the `Recorder` (store first,
then Dagster) without ever waiting on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from agent_pipelines.agents.base import AgentCallError, FailureKind
from agent_pipelines.agents.limiter import Outcome, outcome_of
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.checks import CheckOutcome, Judged, judge_verdict, local_checks
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.lifecycle.gate import LifecycleGate
from agent_pipelines.scheduling.admission import Admission, Refusal
from agent_pipelines.scheduling.agent_health import HealthGate
from agent_pipelines.scheduling.attempts import AttemptMarker
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock
from agent_pipelines.scheduling.load import LoadBoard
from agent_pipelines.scheduling.prepare import Preparer
from agent_pipelines.scheduling.publication import Publication, health_check
from agent_pipelines.scheduling.recorder import Recorder, Verdict
from agent_pipelines.scheduling.retries import deadline_for, retry_delay
from agent_pipelines.scheduling.run_log import never_raising
from agent_pipelines.scheduling.sessions import TurnGate
from agent_pipelines.scheduling.task_turns import TaskTurns
from agent_pipelines.scheduling.subscriptions import subscribers
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import Attempt, Finished, WorkItem
from agent_pipelines.store import Claim, StateStore, StoredEvent, status
from agent_pipelines.telemetry.spans import ExecutionSpans

#: Claim and render this long before an instant (longer for big bursts), so a busy machine
#: (another run starting) cannot delay the sending.
PREPARE_LEAD_S = 1.0
PREPARE_LEAD_PER_ITEM_S = 0.004
#: Mark executions `sending` this long before their instant (one statement for a burst).
MARK_LEAD_S = 0.1
#: How often the events table is polled for the run's subscribers.
EVENT_POLL_S = 0.02
#: After a run's event window ends, look once more for events committed right at the boundary.
EVENT_SETTLE_S = 1.0
#: How often a run re-reads which tasks are paused.
PAUSED_REFRESH_S = 2.0
#: Collect garbage only when no instant is this close (a full collection pauses every thread).
QUIET_FOR_GC_S = 0.3

FollowRule = Literal["dispatch", "manual"]


@dataclass(frozen=True)
class EventWindow:
    """Events received in [start, end) are this run's to handle, for these listening tasks."""

    start: dt.datetime
    end: dt.datetime
    listeners: tuple[str, ...]


@dataclass
class Plan:
    """What a run asks its dispatcher to do."""

    items: list[WorkItem] = field(default_factory=list)
    #: tasks this run may start on its own: downstream tasks of workflows, event subscribers
    carried: Collection[str] = ()
    #: "dispatch": a workflow's downstream tasks without a trigger of their own follow their
    #: upstream here, and `on_upstream` tasks too; "manual": Dagster runs the selected
    #: downstream steps itself, only unselected `on_upstream` tasks follow here
    follow: FollowRule = "dispatch"
    events: EventWindow | None = None
    #: do not finish before this moment (epoch seconds), e.g. the end of a window
    busy_until: float | None = None


@dataclass
class Summary:
    finished: dict[str, int] = field(default_factory=dict)  # status -> count
    lost_claims: int = 0

    def count(self, state: str) -> None:
        self.finished[state] = self.finished.get(state, 0) + 1

    def text(self) -> str:
        parts = [f"{count} {state}" for state, count in sorted(self.finished.items())]
        if self.lost_claims:
            parts.append(f"{self.lost_claims} held by another run")
        return ", ".join(parts) or "nothing to do"


class Dispatcher:
    def __init__(
        self,
        *,
        catalog: Catalog,
        store: StateStore,
        run_id: str,
        publish: Callable[[Publication], None],
        log: logging.Logger | Any = None,
        clock: Clock = SYSTEM_CLOCK,
        variables_for: Callable[[str], Mapping[str, Any]] = lambda _task: {},
        pool_factory: Callable[[Mapping[str, Any]], AgentPool] = AgentPool,
        chooser: PromptChooser | None = None,
        every_success: bool = True,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.log = never_raising(log or logging.getLogger(__name__))  # it logs while the database is down
        self.pool_factory = pool_factory
        self._chooser = chooser
        self._variables_for = variables_for
        self.health = HealthGate(
            catalog, store, clock, self.log, on_change=lambda h: publish(Publication(key="", task="", events=(health_check(h),)))
        )
        self.lifecycle = LifecycleGate(catalog, store, clock, self.log)
        self.recorder = Recorder(
            catalog=catalog, store=store, run_id=run_id, health=self.health, publish=publish, log=self.log, every_success=every_success
        )
        self.summary = Summary()
        self.spans = ExecutionSpans(run_id)
        self.admission = Admission(clock)
        self._sending: dict[str, dict[str, dt.datetime]] = {}  # task -> its keys in flight in this run: when marked
        self.task_turns = TaskTurns(clock, lambda task: dict(self._sending.get(task, {})), self._sending_elsewhere)
        self.load = LoadBoard(store, run_id, clock, self.admission, self.log, self.task_turns)
        self._heap: list[tuple[float, int, WorkItem]] = []
        self._order = itertools.count()
        self._pending: list[WorkItem] = []  # added from other threads before the loop runs
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._busy: set[asyncio.Task[Any]] = set()  # sends, judges
        self._stop_requested = threading.Event()
        self._grace_s = 0.0
        self._plan = Plan()
        self._followers: dict[str, list[TaskSpec]] = {}
        self._listening = False

    # -- from any thread --------------------------------------------------------------------------

    def add(self, items: Iterable[WorkItem]) -> None:
        items = list(items)
        with self._lock:
            if self._loop is None:
                self._pending.extend(items)
                return
            loop = self._loop
        loop.call_soon_threadsafe(self._push_all, items)

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop sending: executions not sent yet are released, requests in flight get `grace_s`
        to answer. Never sends anything early."""
        self._grace_s = grace_s
        self._stop_requested.set()
        with self._lock:
            loop = self._loop
        if loop is not None and self._changed is not None:
            loop.call_soon_threadsafe(self._changed.set)

    # -- the run ----------------------------------------------------------------------------------

    async def run(self, plan: Plan) -> Summary:
        self._plan = plan
        self.spans = ExecutionSpans.for_plan(self.run_id, plan)
        self._followers = self._follower_map(plan)
        self._changed = asyncio.Event()
        self.recorder.start()
        gc.collect()
        gc.freeze()  # what exists now never needs collecting: shorter pauses later
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            await asyncio.to_thread(self._setup)
            async with self.pool_factory(self.catalog.agents) as pool:
                self.pool = pool
                with self._lock:
                    self._loop = asyncio.get_running_loop()
                    pending, self._pending = self._pending, []
                self._push_all([*plan.items, *pending])
                self._listening = plan.events is not None and bool(plan.events.listeners)
                watcher = asyncio.create_task(self._watch_events(plan.events)) if self._listening else None
                collector = asyncio.create_task(self._collect_garbage())
                sharing = asyncio.create_task(self.load.run())
                try:
                    await self._drive()
                finally:
                    await self._wind_down(watcher, collector)
                    sharing.cancel()
                    await self._share_final()
        finally:
            await asyncio.to_thread(self._release_everything)
            if gc_was_enabled:
                gc.enable()
        return self.summary

    def _setup(self) -> None:
        carried = {item.task.name for item in self._plan.items} | set(self._plan.carried)
        carried |= {f.name for followers in self._followers.values() for f in followers}
        chooser = self._chooser or PromptChooser(self.catalog, PromptRegistry(self.store), carried)
        self.preparer = Preparer(self.catalog, self.store, chooser, self.clock.now, self._variables_for)
        self.marker = AttemptMarker(self.recorder, self.clock)
        self.turns = TurnGate(self.store, self.clock)
        self.health.refresh(force=True)
        self.lifecycle.refresh(force=True)
        if not self.recorder.every_success:
            self.recorder.known_outcomes(self.store.latest_outcomes(sorted(carried)))
        self._paused, self._paused_at = self.store.paused_tasks(), self.clock.time()
        self.load.load(self.catalog.agents)

    async def _share_final(self) -> None:
        """This run's last view of its agents: nothing in flight or waiting any more."""
        try:
            await self.load.sync(final=True)
        except Exception:  # noqa: BLE001 - advisory: a stale view expires by itself
            self.log.exception("could not share agent load through the store")

    def _follower_map(self, plan: Plan) -> dict[str, list[TaskSpec]]:
        selected = {item.task.name for item in plan.items} | set(plan.carried)
        followers: dict[str, list[TaskSpec]] = {}
        for task in self.catalog.tasks.values():
            if task.is_batch:
                continue
            own_trigger = task.schedule is not None or bool(task.events) or task.on_upstream
            if plan.follow == "dispatch":
                follows = task.on_upstream or (not own_trigger and task.name in selected)
            else:
                follows = task.on_upstream and task.name not in selected
            if follows and task.enabled:
                for dep in task.depends_on:
                    followers.setdefault(dep, []).append(task)
        return followers

    def _push_all(self, items: Iterable[WorkItem]) -> None:
        for item in items:
            heapq.heappush(self._heap, (item.fire_at, next(self._order), item))
        if self._changed is not None:
            self._changed.set()

    async def _drive(self) -> None:
        assert self._changed is not None
        while not self._stop_requested.is_set():
            now = self.clock.time()
            if not self._heap:
                if self._idle(now):
                    return
                await self._wait(None if self._plan.busy_until is None or self._plan.busy_until <= now else self._plan.busy_until)
                continue
            head = self._heap[0][0]
            count = sum(1 for at, _n, _i in self._heap if at <= head + PREPARE_LEAD_S)
            prepare_at = head - PREPARE_LEAD_S - PREPARE_LEAD_PER_ITEM_S * count
            if now < prepare_at:
                await self._wait(prepare_at)
                continue
            batch: list[WorkItem] = []
            while self._heap and self._heap[0][0] <= head + PREPARE_LEAD_S:
                batch.append(heapq.heappop(self._heap)[2])
            attempts = await asyncio.to_thread(self._prepare, batch)
            for attempt in attempts:
                self._spawn(self._send(attempt))

    def _idle(self, now: float) -> bool:
        busy_until = self._plan.busy_until
        return not self._busy and not self._listening and (busy_until is None or now >= busy_until)

    async def _wait(self, until: float | None) -> None:
        """Until `until`, new work, or a change in what is in flight; whichever comes first."""
        assert self._changed is not None
        self._changed.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep_until(until)) if until is not None else None
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait([f for f in (sleeper, changed) if f is not None], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (sleeper, changed):
                if future is not None and not future.done():
                    future.cancel()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._busy.add(task)

        def done(finished_task: asyncio.Task[Any]) -> None:
            self._busy.discard(finished_task)
            if not finished_task.cancelled() and finished_task.exception() is not None:
                self.log.error(f"dispatcher task failed: {finished_task.exception()!r}")
            if self._changed is not None:
                self._changed.set()

        task.add_done_callback(done)

    # -- before the instant (worker thread) -------------------------------------------------------

    def _prepare(self, batch: Sequence[WorkItem]) -> list[Attempt]:
        """Claim what this run may send, render it; what cannot be sent is recorded at once."""
        won = self._claim(batch)
        attempts: list[Attempt] = []
        for item in batch:
            if item.key not in won:
                self.summary.lost_claims += 1
                continue
            self.spans.begin(item)
            if item.task.name in self._paused and item.claim != "manual":
                self._finish(Finished(item, status.SKIPPED, reason="the task is paused"))
                continue
            prepared = self.preparer.prepare(item)
            if isinstance(prepared, AgentCallError):
                self._finish(Finished(item, status.FAILED, problem=prepared, reason="nothing was sent"))
                continue
            attempts.append(prepared)
        self.health.refresh()
        self.lifecycle.refresh()
        if self.clock.time() - self._paused_at >= PAUSED_REFRESH_S:
            self._paused, self._paused_at = self.store.paused_tasks(), self.clock.time()
        return attempts

    def _claim(self, batch: Sequence[WorkItem]) -> set[str]:
        now = self.clock.now()
        by_mode: dict[str, list[WorkItem]] = {}
        for item in batch:
            by_mode.setdefault(item.claim, []).append(item)
        won = {item.key for item in by_mode.get("own", [])}
        fresh = [self._claim_row(item) for item in by_mode.get("new", [])]
        won |= self.store.claim(fresh)
        won |= self.store.claim_again([self._claim_row(item) for item in by_mode.get("manual", [])])
        won |= self.store.take_over([item.key for item in by_mode.get("take", [])], self.run_id, now)
        return won

    def _claim_row(self, item: WorkItem) -> Claim:
        return Claim(
            idempotency_key=item.key,
            task=item.task.name,
            agent=item.task.agent or "",
            run_id=self.run_id,
            trigger=item.trigger.kind,
            due_time=item.due_time,
            prompt_version=self.catalog.prompt_versions[item.task.name],
            deadline=item.deadline,
            upstream=item.upstream or None,
        )

    # -- at the instant ---------------------------------------------------------------------------

    async def _send(self, attempt: Attempt) -> None:
        item = attempt.item
        agent = item.task.agent or ""
        left = False
        try:
            await self.clock.sleep_until(item.fire_at - MARK_LEAD_S)
            reason = await self.health.admit(agent, self.pool)
            if reason is not None:
                self._finish(Finished(item, status.SKIPPED, reason=reason, version=attempt.version))
                return
            reason = await self.lifecycle.admit(agent, item.task.name)
            if reason is not None:
                problem = AgentCallError(FailureKind.CONNECTION, reason)
                self._finish(Finished(item, status.FAILED, problem=problem, reason="nothing was sent", version=attempt.version))
                return
            try:
                connection = self.pool.connection(agent)
            except AgentCallError as error:
                self._finish(Finished(item, status.FAILED, problem=error, reason="nothing was sent", version=attempt.version))
                return
            refusal = await self.task_turns.turn(item)
            if refusal is not None:
                self._finish(Finished(item, refusal.status, reason=refusal.reason, version=attempt.version))
                return
            gate = self.load.track(agent, connection.gate)
            admitted = await self.admission.enter(item, agent, gate)
            if isinstance(admitted, Refusal):
                self._finish(Finished(item, admitted.status, reason=admitted.reason, version=attempt.version))
                return
            permit, outcome = admitted, cast(Outcome, "ignore")
            turn = (
                self.turns.turn(attempt.request.session.key, item.key, attempt.request.timeout_s)
                if item.task.session == "task"
                else contextlib.nullcontext()
            )
            try:
                async with turn:
                    number = await self.marker.mark(item.key)
                    if number is None:
                        self.summary.lost_claims += 1
                        self.log.info(f"{item.task.name}: {item.trigger.ref} is no longer this run's to send")
                        return
                    attempt.number = number
                    self._sending.setdefault(item.task.name, {})[item.key] = self.clock.now()
                    await self.clock.sleep_until(item.fire_at)  # never early
                    attempt.sent_at = self.clock.now()
                    gate.sending(permit)
                    left = True
                    with self.spans.attempt(attempt):
                        try:
                            attempt.response = await connection.client.invoke(attempt.request)
                        except AgentCallError as error:
                            attempt.error = error
                        except Exception as exc:  # noqa: BLE001 - an adapter bug fails this execution only
                            attempt.error = AgentCallError(FailureKind.MALFORMED, f"unexpected client error: {exc!r}")
                    attempt.answered_at = self.clock.now()
                    outcome = outcome_of(attempt.error.kind if attempt.error is not None else None)
            finally:
                if self._sending.get(item.task.name, {}).pop(item.key, None) is not None:
                    self.task_turns.answered(item.task.name)
                gate.release(permit, outcome, _latency_s(attempt) if outcome == "ok" else None)
        except asyncio.CancelledError:
            if left:
                why = "the run stopped while the request was in flight: the agent may have acted"
                self._finish(Finished(item, status.UNKNOWN, attempt=attempt, reason=why, version=attempt.version))
            else:
                self._finish(Finished(item, status.NOT_SENT, reason="the run stopped before it was sent", version=attempt.version))
            raise
        except Exception as exc:  # noqa: BLE001 - recorded; the store cannot be reached, say
            self.log.exception(f"{item.task.name}: could not send {item.key}")
            state = status.UNKNOWN if left else status.NOT_SENT
            self._finish(Finished(item, state, attempt=attempt if left else None, reason=f"platform error: {exc!r}"))
            return
        self._conclude(attempt)

    async def _sending_elsewhere(self, tasks: Sequence[str]) -> dict[str, dict[str, dt.datetime | None]]:
        """For one-at-a-time tasks: their requests in flight in other runs."""
        return await asyncio.to_thread(self.store.sending_of_tasks, tasks, self.run_id)

    # -- after the answer -------------------------------------------------------------------------

    def _conclude(self, attempt: Attempt) -> None:
        item = attempt.item
        if attempt.response is not None:
            checks = self._local_checks(attempt)
            finished = Finished(item, status.SUCCEEDED, attempt=attempt, version=attempt.version)
            self._finish(finished, checks)
            self._follow(finished)
            judge = item.task.checks.judge if item.task.checks is not None else None
            if judge is not None:
                self._spawn(self._judge(finished))
            return
        error = attempt.error
        assert error is not None
        retry = self._retry_time(item, error)
        if isinstance(retry, float):
            when = dt.datetime.fromtimestamp(retry, dt.timezone.utc)
            self._finish(Finished(item, status.RETRYING, attempt=attempt, next_attempt_at=when, version=attempt.version))
            self._push_all([item.again(retry, item.retry_number + 1)])
            return
        final = status.UNKNOWN if error.outcome_unknown else status.FAILED
        self._finish(Finished(item, final, attempt=attempt, reason=retry, version=attempt.version))

    def _retry_time(self, item: WorkItem, error: AgentCallError) -> float | str | None:
        """When to try again, or why not (None: the failure is final by its nature)."""
        spec = item.task.retries
        if not error.is_retryable(item.task.idempotent):
            return "not retried: the agent may have acted (declare `idempotent: true` to allow it)" if error.outcome_unknown else None
        if self._stop_requested.is_set():
            return "not retried: the run stopped"
        retry_number = item.retry_number + 1
        if retry_number > spec.count:
            return f"gave up after {spec.count + 1} attempts" if spec.count else None
        wait = retry_delay(spec, retry_number)
        if error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        when = self.clock.time() + wait
        if item.deadline is not None and when >= item.deadline.timestamp():
            return f"gave up: the next attempt would start after the execution's deadline {item.deadline.isoformat(timespec='seconds')}"
        return when

    def _local_checks(self, attempt: Attempt) -> list[CheckOutcome]:
        checks = attempt.item.task.checks
        if checks is None or attempt.response is None:
            return []
        return local_checks(checks, _judged(attempt))

    async def _judge(self, finished: Finished) -> None:
        attempt = finished.attempt
        assert attempt is not None and attempt.item.task.checks is not None
        spec = attempt.item.task.checks.judge
        assert spec is not None
        verdict = await judge_verdict(spec, self.pool, self.catalog.agents[spec.agent].timeout, _judged(attempt))
        self.recorder.submit_verdict(Verdict(finished, (verdict,)))

    def _follow(self, finished: Finished) -> None:
        """Each downstream task follows this execution at once, reading exactly its output."""
        item, attempt = finished.item, finished.attempt
        assert attempt is not None and attempt.response is not None
        now = self.clock.now()
        for task in self._followers.get(item.task.name, []):
            self._push_all(
                [
                    WorkItem(
                        task=task,
                        trigger=Trigger.after(item.key),
                        fire_at=now.timestamp(),
                        upstream={item.task.name: item.key},
                        upstream_outputs={item.task.name: attempt.response.output},
                        deadline=deadline_for(task, None, now),
                    )
                ]
            )

    def _finish(self, finished: Finished, checks: Sequence[CheckOutcome] = ()) -> None:
        finished = self.spans.finish(finished)
        self.summary.count(finished.status)
        self.recorder.submit(finished, checks)

    # -- events -----------------------------------------------------------------------------------

    async def _watch_events(self, window: EventWindow | None) -> None:
        assert window is not None
        try:
            listeners = [self.catalog.tasks[name] for name in window.listeners if name in self.catalog.tasks]
            await self.clock.sleep_until(window.start.timestamp())
            seq = await asyncio.to_thread(self.store.last_event_seq_before, window.start)
            end = window.end.timestamp()
            while not self._stop_requested.is_set():
                closing = self.clock.time() >= end + EVENT_SETTLE_S
                newest = await asyncio.to_thread(self.store.newest_event_seq)
                while newest > seq:
                    events = await asyncio.to_thread(self.store.events_after, seq, 500)
                    if not events:
                        break
                    seq = self._route(events, listeners, window, seq)
                    if events[-1].seq != seq:
                        break  # the rest arrived after the window: the next run's
                if closing:
                    return
                await asyncio.sleep(EVENT_POLL_S)
        finally:
            self._listening = False
            if self._changed is not None:
                self._changed.set()

    def _route(self, events: Sequence[StoredEvent], listeners: Sequence[TaskSpec], window: EventWindow, seq: int) -> int:
        now = self.clock.now()
        items = []
        for event in events:
            if event.received_at >= window.end:
                break
            seq = event.seq
            items += [WorkItem.for_event(task, event, now) for task in subscribers([t for t in listeners if t.name not in self._paused], event)]
        self._push_all(items)
        return seq

    # -- the end ----------------------------------------------------------------------------------

    async def _collect_garbage(self) -> None:
        """Collections run between instants, never right before one."""
        while True:
            await asyncio.sleep(1.0)
            head = self._heap[0][0] if self._heap else None
            if head is None or head - self.clock.time() > QUIET_FOR_GC_S:
                gc.collect(1)

    async def _wind_down(self, watcher: asyncio.Task[None] | None, collector: asyncio.Task[None]) -> None:
        collector.cancel()
        if watcher is not None:
            watcher.cancel()
        if self._stop_requested.is_set() and self._busy:
            in_flight = list(self._busy)
            _done, still = await asyncio.wait(in_flight, timeout=self._grace_s) if in_flight else (set(), set())
            for task in still:
                task.cancel()
        while self._busy:
            await asyncio.gather(*list(self._busy), return_exceptions=True)
        for future in (watcher, collector):
            if future is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await future

    def _release_everything(self) -> None:
        """Record everything, then hand back whatever this run still holds (nothing, unless it
        was stopped): unsent claims become `not_sent`, pending retries wait for another run."""
        self.recorder.close()
        if self._stop_requested.is_set():
            released = self.store.release_run(self.run_id, "the run stopped")
            for execution in released:
                self.summary.count(execution.status)
        self.spans.close()


def _latency_s(attempt: Attempt) -> float | None:
    """How long the agent took, on the dispatcher's clock (what the limiter learns from)."""
    if attempt.sent_at is None or attempt.answered_at is None:
        return None
    return (attempt.answered_at - attempt.sent_at).total_seconds()


def _judged(attempt: Attempt) -> Judged:
    response = attempt.response
    assert response is not None
    tokens = (response.tokens_in or 0) + (response.tokens_out or 0)
    return Judged(attempt.item.key, attempt.request.prompt, response.output, response.latency_ms, tokens)
