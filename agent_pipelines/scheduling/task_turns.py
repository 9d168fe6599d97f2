"""One execution of a task at a time (`overload: skip_while_running` / `wait_while_running`), and
what a due time does while an earlier one of its task is in flight, in this run or another.

`skip_while_running` skips it at once, as OpenClaw's and Hermes' own cron skip a slot while the
job runs. `wait_while_running` lets it wait for the earlier one as long as it may still start:
until its deadline (the moment it was due plus its misfire grace), as Kubernetes' `Forbid`
starts a missed schedule once the running job ends, within `startingDeadlineSeconds`. It leaves
as soon as the earlier one is answered; a newer due time of the task takes its place (the older
is `superseded`, as with `latest_only`); past its deadline it is `skipped` ("still running").
A task whose answers take longer than its period then runs back to back, never two at once,
instead of every other period; its misfire grace bounds how late each start may be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from agent_pipelines.scheduling.admission import Refusal, deadline_for, one_at_a_time, still_running, superseded_reason
from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import status

#: How often waiting due times look at the store (one query for all of them) for other runs'
#: requests in flight; an answer in this run wakes its task's at once. Newer due times other runs
#: claimed come from the run's `LoadBoard`, as for `latest_only` waiters (`supersede`).
LOOK_AGAIN_S = 1.0
#: What a due time waits for, in a `superseded` reason.
WAITED_FOR = "its task's execution in flight"

InFlight = Mapping[str, dt.datetime | None]  # idempotency key -> when it was sent


Here = Callable[[str], InFlight]  # a task's requests in flight in this run
Look = Callable[[Sequence[str]], Awaitable[Mapping[str, InFlight]]]  # tasks' requests in flight in other runs


@dataclass(eq=False)
class _Waiter:
    item: WorkItem
    kicked: asyncio.Future[str] = field(repr=False)  # resolved with the reason it was replaced


class TaskTurns:
    """The turns of one-at-a-time tasks in one dispatcher."""

    def __init__(self, clock: Clock, here: Here, look: Look) -> None:
        self.clock = clock
        self._here = here
        self._look = look
        self._waiters: dict[str, _Waiter] = {}  # task -> its due time waiting for its turn
        self._answered: dict[str, asyncio.Event] = {}  # task -> set when a request of it is answered here
        self._seen: Mapping[str, InFlight] | None = None
        self._seen_at = -1.0
        self._seen_tasks: set[str] = set()
        self._looking: asyncio.Lock | None = None

    def answered(self, task: str) -> None:
        """A request of `task` was answered in this run: its waiting due time may go."""
        event = self._answered.get(task)
        if event is not None:
            event.set()

    def waiting(self) -> int:
        return len(self._waiters)

    def waiting_tasks(self) -> list[str]:
        return sorted(self._waiters)

    def supersede(self, newest_due: Mapping[str, dt.datetime]) -> None:
        """Another run claimed a newer due time of these tasks: their waiting ones are replaced."""
        for task, due in newest_due.items():
            waiter = self._waiters.get(task)
            if waiter is not None and waiter.item.due_time is not None and due > waiter.item.due_time:
                _kick(waiter, superseded_reason(due, waiter.item, WAITED_FOR))

    async def turn(self, item: WorkItem) -> Refusal | None:
        """None when `item` may be sent (nothing else of its task in flight), or why it will not be."""
        if not one_at_a_time(item):
            return None  # no store query on the common path
        task = item.task.name
        refusal = still_running(item, self._here(task), self.clock.now())
        if refusal is None:  # nothing here: one look at the store for this task
            refusal = still_running(item, (await self._look([task])).get(task, {}), self.clock.now())
        if refusal is None or item.task.overload == "skip_while_running":
            return refusal
        deadline, why = deadline_for(item)
        if self.clock.time() >= deadline:
            return refusal  # late already (a catch-up): no wait
        older = self._waiters.get(task)
        if older is not None and older.item.due_time is not None and item.due_time is not None:
            if older.item.due_time >= item.due_time:
                return Refusal(status.SKIPPED, superseded_reason(older.item.due_time, item, WAITED_FOR))
            _kick(older, superseded_reason(item.due_time, older.item, WAITED_FOR))
        waiter = _Waiter(item, asyncio.get_running_loop().create_future())
        self._waiters[task] = waiter
        try:
            return await self._wait(waiter, deadline, why)
        finally:
            if self._waiters.get(task) is waiter:
                del self._waiters[task]

    async def _wait(self, waiter: _Waiter, deadline: float, why: str) -> Refusal | None:
        item, task = waiter.item, waiter.item.task.name
        answered = self._answered.setdefault(task, asyncio.Event())
        while True:
            answered.clear()
            timer = asyncio.ensure_future(self.clock.sleep_until(min(deadline, self.clock.time() + LOOK_AGAIN_S)))
            signal = asyncio.ensure_future(answered.wait())
            try:
                await asyncio.wait([timer, signal, waiter.kicked], return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                signal.cancel()
            if waiter.kicked.done():
                return Refusal(status.SKIPPED, waiter.kicked.result())
            in_flight = {**(await self._store_look()).get(task, {}), **self._here(task)}
            if self.clock.time() >= deadline:
                until = dt.datetime.fromtimestamp(deadline, dt.timezone.utc).isoformat(timespec="seconds")
                return still_running(item, in_flight, self.clock.now(), waited=f"waited for it until its deadline {until}, {why}")
            if still_running(item, in_flight, self.clock.now()) is None:
                return None

    async def _store_look(self) -> Mapping[str, InFlight]:
        """Other runs' requests in flight of every waiting task, read at most once per
        `LOOK_AGAIN_S` however many wait (one query for all)."""
        if self._looking is None:
            self._looking = asyncio.Lock()
        async with self._looking:
            tasks = set(self._waiters)
            seen = self._seen
            if seen is None or self.clock.time() - self._seen_at >= LOOK_AGAIN_S or not tasks <= self._seen_tasks:
                self._seen_at, self._seen_tasks = self.clock.time(), tasks
                seen = self._seen = await self._look(sorted(tasks))
            return seen


def _kick(waiter: _Waiter, reason: str) -> None:
    if not waiter.kicked.done():
        waiter.kicked.set_result(reason)
