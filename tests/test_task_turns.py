"""`overload: wait_while_running` on a virtual clock: a due time that comes while an earlier one of
its task is in flight waits for it until its deadline (misfire grace), goes as soon as it is
answered, is replaced by a newer due time, and past its deadline is skipped with the reason;
`skip_while_running` skips it at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from agent_pipelines.scheduling.admission import STILL_RUNNING, SUPERSEDED, Admission, Refusal
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.scheduling.load import LoadBoard
from agent_pipelines.scheduling.task_turns import LOOK_AGAIN_S, TaskTurns
from agent_pipelines.store import Claim, StateStore, status
from tests.test_admission import T0, due, settle, task

POLL = task("poll", overload="wait_while_running")  # every 10 s, misfire grace 30 s


class InFlight:
    """What the dispatcher and the store would say: the task's keys in flight here and in other
    runs."""

    def __init__(self) -> None:
        self.keys: dict[str, dt.datetime | None] = {}  # in flight here
        self.elsewhere: dict[str, dt.datetime | None] = {}  # in other runs
        self.looks: list[list[str]] = []

    def here(self, task: str) -> dict[str, dt.datetime | None]:
        return dict(self.keys)

    async def look(self, tasks: Sequence[str]) -> dict[str, dict[str, dt.datetime | None]]:
        self.looks.append(list(tasks))
        return {task: dict(self.elsewhere) for task in tasks if self.elsewhere}


def run(scenario: Callable[[ManualClock, TaskTurns, InFlight], Awaitable[None]]) -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        in_flight = InFlight()
        await scenario(clock, TaskTurns(clock, in_flight.here, in_flight.look), in_flight)

    asyncio.run(main())


def test_a_due_time_goes_as_soon_as_the_earlier_one_is_answered() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        turn = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        await settle()
        clock.advance(0.3)
        await settle()
        assert not turn.done() and turns.waiting() == 1, "an earlier one of the task is in flight"
        in_flight.keys = {}
        turns.answered("poll")
        await settle()
        assert turn.done() and turn.result() is None, "answered in this run: it goes without waiting for a look"
        assert turns.waiting() == 0

    run(scenario)


def test_an_earlier_one_in_another_run_is_looked_at_again_every_second() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.elsewhere = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        turn = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        await settle()
        in_flight.elsewhere = {}  # answered in the other run: no signal here
        clock.advance(LOOK_AGAIN_S / 2)
        await settle()
        assert not turn.done()
        clock.advance(LOOK_AGAIN_S / 2)
        await settle()
        assert turn.done() and turn.result() is None

    run(scenario)


def test_many_waiting_tasks_share_one_look_at_the_store() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        polls = [task(f"poll_{i}", overload="wait_while_running") for i in range(50)]
        in_flight.elsewhere = {"someone-else": T0}
        clock.set(due(polls[0], 10).fire_at)
        waiting = [asyncio.ensure_future(turns.turn(due(spec, 10))) for spec in polls]
        await settle()
        assert turns.waiting() == 50 and len(in_flight.looks) == 50, "each looked once on arrival"
        for _ in range(3):
            clock.advance(LOOK_AGAIN_S)
            await settle()
        assert len(in_flight.looks) == 50 + 3 and all(len(tasks) == 50 for tasks in in_flight.looks[50:]), "one look a second for all"
        in_flight.elsewhere = {}
        clock.advance(LOOK_AGAIN_S)
        await settle()
        assert all(w.done() and w.result() is None for w in waiting)

    run(scenario)


def test_past_its_deadline_it_is_skipped_still_running() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        turn = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        for _ in range(29):
            clock.advance(1.0)
            await settle()
        assert not turn.done(), "within the misfire grace (30 s)"
        clock.advance(1.0)
        await settle()
        refusal = turn.result()
        assert isinstance(refusal, Refusal) and refusal.status == status.SKIPPED
        assert refusal.reason == (
            f"{STILL_RUNNING}: its due time 2026-12-01T12:00:00.000Z has been in flight for 40.0 s (waited for it until its "
            "deadline 2026-12-01T12:00:40+00:00, misfire grace 30 s; overload: wait_while_running)"
        )

    run(scenario)


def test_a_due_time_past_its_deadline_already_does_not_wait() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at + 31)
        refusal = await turns.turn(due(POLL, 10))
        assert isinstance(refusal, Refusal) and refusal.reason.startswith(STILL_RUNNING)
        assert turns.waiting() == 0

    run(scenario)


def test_a_newer_due_time_replaces_the_waiting_one() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        older = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        await settle()
        clock.set(due(POLL, 20).fire_at)
        newer = asyncio.ensure_future(turns.turn(due(POLL, 20)))
        await settle()
        refusal = older.result()
        assert isinstance(refusal, Refusal) and refusal.status == status.SKIPPED
        assert refusal.reason.startswith(f"{SUPERSEDED}: a newer due time of this task (2026-12-01T12:00:20+00:00)")
        assert not newer.done() and turns.waiting() == 1
        late = await turns.turn(due(POLL, 10))  # an older one arriving after the newer: it does not wait
        assert isinstance(late, Refusal) and late.reason.startswith(SUPERSEDED)
        in_flight.keys = {}
        turns.answered("poll")
        await settle()
        assert newer.result() is None

    run(scenario)


def test_a_newer_due_time_claimed_by_another_run_replaces_it() -> None:
    """The run's load board reads the newest claimed due times of the waiting tasks every second
    (`waiting_tasks`) and hands them over (`supersede`), as it does for `latest_only` waiters."""

    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        turn = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        await settle()
        assert turns.waiting_tasks() == ["poll"]
        turns.supersede({"poll": T0 + dt.timedelta(seconds=10)})  # not newer
        await settle()
        assert not turn.done()
        turns.supersede({"poll": T0 + dt.timedelta(seconds=20)})
        await settle()
        refusal = turn.result()
        assert isinstance(refusal, Refusal) and refusal.reason.startswith(f"{SUPERSEDED}: a newer due time of this task")

    run(scenario)


def test_other_tasks_and_retries_do_not_wait() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        assert await turns.turn(due(POLL, 10, retry_number=1)) is None, "a retry is not a new due time"
        assert await turns.turn(due(task("poll", overload="latest_only"), 10)) is None
        assert in_flight.looks == [], "no store query on the common path"
        in_flight.keys = {}
        assert await turns.turn(due(POLL, 10)) is None, "nothing in flight: it goes at once"

    run(scenario)


def test_skip_while_running_skips_at_once() -> None:
    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at + 0.5)
        refusal = await turns.turn(due(task("poll", overload="skip_while_running"), 10))
        assert isinstance(refusal, Refusal) and refusal.status == status.SKIPPED
        assert refusal.reason == f"{STILL_RUNNING}: its due time 2026-12-01T12:00:00.000Z has been in flight for 10.5 s (overload: skip_while_running)"
        assert turns.waiting() == 0

    run(scenario)


def test_the_load_board_hands_waiting_tasks_the_newer_due_times_other_runs_claimed(tmp_path: Path) -> None:
    """The wiring on a real SQLite store: another run claims a newer due time of a waiting task;
    the board's next sync (every second in a run) replaces the waiting one."""
    store = StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")
    newer = due(POLL, 20)
    assert newer.due_time is not None

    async def scenario(clock: ManualClock, turns: TaskTurns, in_flight: InFlight) -> None:
        board = LoadBoard(store, "this-run", clock, Admission(clock), logging.getLogger(__name__), turns)
        in_flight.keys = {due(POLL, 0).key: T0}
        clock.set(due(POLL, 10).fire_at)
        turn = asyncio.ensure_future(turns.turn(due(POLL, 10)))
        await settle()
        await board.sync()
        assert not turn.done(), "nothing newer claimed yet"
        store.claim([Claim(newer.key, "poll", "claw", "other-run", "schedule", newer.due_time, "v")])
        clock.set(newer.fire_at)
        await board.sync()
        await settle()
        refusal = turn.result()
        assert isinstance(refusal, Refusal) and refusal.reason.startswith(f"{SUPERSEDED}: a newer due time of this task (2026-12-01T12:00:20")

    run(scenario)
