"""The platform's queue in front of each agent: due executions beyond the agent's learned limit
wait here, visible, instead of inside the agent where nobody sees them.

Waiters are served by priority (the task's `priority`, higher first), then due time, then in
arrival order; scheduled executions due at the same instant in an order drawn from their keys
instead, so the losers of a saturated instant are not always the same tasks.
Each waits at most until its deadline: the moment it was meant to leave plus its task's misfire
`grace` (a due time later than that is a misfire), or its retry deadline if sooner. Past it,
the execution is recorded `skipped` ("agent saturated", with the queue and the agent's latency);
a retry that could not be sent is `failed` with the same reason. A task with `overload:
latest_only` keeps at most one due time waiting: a newer one takes its place in the queue
(so a task that is always superseded is not always last) and the older one is `skipped`,
"superseded"; also when the newer one was claimed by another run. `overload: skip_while_running`
does the same and also skips a due time while an earlier one of the task is in flight (in any
run): one execution of the task at a time, as OpenClaw's and Hermes' own cron do, but recorded
`skipped` ("still running") instead of silently. `overload: wait_while_running` keeps one at a
time too, but the due time waits for the earlier one until its deadline
(`agent_pipelines.scheduling.task_turns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent_pipelines.agents.limiter import ConcurrencyGate, Permit, others_queue_note
from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import status

#: How every refusal for saturation starts (notifications and tests look for it).
SATURATED = "agent saturated"
SUPERSEDED = "superseded"
STILL_RUNNING = "still running"


@dataclass(frozen=True)
class Refusal:
    """Why an execution was not sent, and the status it ends in."""

    status: str
    reason: str


@dataclass(eq=False)
class _Waiting:
    item: WorkItem
    agent: str
    entered_at: float
    rank: tuple[float, ...]
    kicked: asyncio.Future[str] = field(repr=False)  # resolved with a reason to stop waiting


#: Overload policies that keep one execution of a task in flight at a time.
ONE_AT_A_TIME = frozenset({"skip_while_running", "wait_while_running"})


def one_at_a_time(item: WorkItem) -> bool:
    """A new due time (not a retry) of a task that keeps one execution in flight at a time."""
    return item.task.overload in ONE_AT_A_TIME and item.retry_number == 0


def still_running(item: WorkItem, sending: Mapping[str, dt.datetime | None], now: dt.datetime, waited: str = "") -> Refusal | None:
    """Why a `skip_while_running` (or `wait_while_running`) due time may not go now: another
    execution of its task is in flight (`sending`: key -> when it left, of any run). None: it may.
    `waited`: how long this one waited for it, and until when (for `wait_while_running`)."""
    if not one_at_a_time(item):
        return None
    others = {key: at for key, at in sending.items() if key != item.key}
    if not others:
        return None
    key, at = min(others.items(), key=lambda pair: pair[1] or now)
    since = f" for {(now - at).total_seconds():.1f} s" if at is not None else ""
    earlier = f"its due time {key.split(':schedule:', 1)[1]}" if ":schedule:" in key else f"its execution {key}"
    policy = f"{waited}; overload: {item.task.overload}" if waited else f"overload: {item.task.overload}"
    return Refusal(status.SKIPPED, f"{STILL_RUNNING}: {earlier} has been in flight{since} ({policy})")


def deadline_for(item: WorkItem) -> tuple[float, str]:
    """Until when an execution may wait for its agent, and why then."""
    grace = item.task.misfire.grace
    moment, why = item.fire_at + grace, f"misfire grace {grace:g} s"
    if item.deadline is not None and item.deadline.timestamp() < moment:
        moment, why = item.deadline.timestamp(), "its retry deadline"
    return moment, why


class Admission:
    """Executions waiting for their agents, in one dispatcher."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._waiting: dict[str, list[_Waiting]] = {}  # agent -> waiters
        self._latest: dict[str, _Waiting] = {}  # latest_only / skip_while_running task -> its waiting due time
        self.skipped: dict[str, int] = {}  # agent -> executions that waited past their deadline
        self.last_skip_at: dict[str, dt.datetime] = {}

    async def enter(self, item: WorkItem, agent: str, gate: ConcurrencyGate) -> Permit | Refusal:
        """A permit for `item`'s request, or why it will not be sent. Cancellable."""
        due = item.due_time.timestamp() if item.due_time else item.fire_at
        shuffle = zlib.crc32(item.key.encode()) if item.trigger.kind == "schedule" else 0
        rank: tuple[float, ...] = (-item.task.priority, due, shuffle)
        replaced = self._supersede(item, agent)
        if isinstance(replaced, Refusal):
            return replaced
        permit = gate.try_acquire()
        if permit is not None:
            return permit
        deadline, why = deadline_for(item)
        rank = replaced.rank if replaced is not None else rank
        waiting = _Waiting(item, agent, self.clock.time(), rank, asyncio.get_running_loop().create_future())
        self._add(waiting)
        acquire = asyncio.ensure_future(gate.acquire(rank))
        timer = asyncio.ensure_future(self.clock.sleep_until(deadline))
        try:
            await asyncio.wait([acquire, timer, waiting.kicked], return_when=asyncio.FIRST_COMPLETED)
            queue_length = self.queued(agent)  # this one included
        except asyncio.CancelledError:
            acquire.cancel()
            raise
        finally:
            timer.cancel()
            self._remove(waiting)
        if acquire.done() and not acquire.cancelled():
            return acquire.result()
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire  # lets the gate take back a permit granted at this very moment
        if waiting.kicked.done():
            return Refusal(self._final(item, status.SKIPPED), waiting.kicked.result())
        self.skipped[agent] = self.skipped.get(agent, 0) + 1
        self.last_skip_at[agent] = self.clock.now()
        return Refusal(self._final(item, status.SKIPPED), self._saturated(agent, gate, waiting, queue_length, deadline, why))

    def supersede(self, newest_due: Mapping[str, dt.datetime]) -> None:
        """Another run claimed a newer due time of these `latest_only` tasks: their older waiting
        due times are replaced."""
        for task, due in newest_due.items():
            waiting = self._latest.get(task)
            if waiting is not None and waiting.item.due_time is not None and due > waiting.item.due_time:
                self._kick(waiting, superseded_reason(due, waiting.item, waiting.agent))

    def latest_only_waiting(self) -> list[str]:
        return sorted(self._latest)

    def queued(self, agent: str) -> int:
        return len(self._waiting.get(agent, ()))

    def oldest_wait_s(self, agent: str) -> float | None:
        waiters = self._waiting.get(agent)
        if not waiters:
            return None
        return self.clock.time() - min(w.entered_at for w in waiters)

    # -- inside -----------------------------------------------------------------------------------

    def _supersede(self, item: WorkItem, agent: str) -> Refusal | _Waiting | None:
        """Why `item` is superseded itself, or the older waiter it replaces (None: neither)."""
        if item.task.overload == "all" or item.due_time is None:
            return None
        waiting = self._latest.get(item.task.name)
        if waiting is None or waiting.item.due_time is None:
            return None
        if waiting.item.due_time >= item.due_time:  # a newer one already waits (a late retry)
            return Refusal(self._final(item, status.SKIPPED), superseded_reason(waiting.item.due_time, item, agent))
        self._kick(waiting, superseded_reason(item.due_time, waiting.item, agent))
        return waiting

    def _kick(self, waiting: _Waiting, reason: str) -> None:
        if not waiting.kicked.done():
            waiting.kicked.set_result(reason)

    def _add(self, waiting: _Waiting) -> None:
        self._waiting.setdefault(waiting.agent, []).append(waiting)
        if waiting.item.task.overload != "all" and waiting.item.due_time is not None:
            self._latest[waiting.item.task.name] = waiting

    def _remove(self, waiting: _Waiting) -> None:
        waiters = self._waiting.get(waiting.agent, [])
        if waiting in waiters:
            waiters.remove(waiting)
        if self._latest.get(waiting.item.task.name) is waiting:
            del self._latest[waiting.item.task.name]

    @staticmethod
    def _final(item: WorkItem, first: str) -> str:
        """A first attempt that never left is skipped; a retry that never left, failed."""
        return first if item.retry_number == 0 else status.FAILED

    def _saturated(self, agent: str, gate: ConcurrencyGate, waiting: _Waiting, queue_length: int, deadline: float, why: str) -> str:
        limiter = gate.limiter
        waited = self.clock.time() - waiting.entered_at
        latency = f"{limiter.recent_s:.1f} s" if limiter.recent_s is not None else "unknown"
        beside = others_queue_note(limiter.baseline_s, limiter.solo_s)
        baseline = f" (without a queue {limiter.baseline_s:.1f} s{'; ' + beside if beside else ''})" if limiter.baseline_s is not None else ""
        until = dt.datetime.fromtimestamp(deadline, dt.timezone.utc).isoformat(timespec="seconds")
        elsewhere = f", {gate.elsewhere} more from other runs" if gate.elsewhere else ""
        return (
            f"{SATURATED}: {agent} had no free slot for {waited:.1f} s, until the deadline {until} ({why}); "
            f"queue length {queue_length} waiting, {gate.in_flight} in flight{elsewhere} "
            f"at its limit {gate.limit} (max_concurrency {limiter.max_limit}); agent latency {latency}{baseline}"
        )


def superseded_reason(newer: dt.datetime, waiting: WorkItem, agent: str) -> str:
    return (
        f"{SUPERSEDED}: a newer due time of this task ({newer.isoformat(timespec='seconds')}) replaced it "
        f"while it waited for {agent} (overload: {waiting.task.overload})"
    )
