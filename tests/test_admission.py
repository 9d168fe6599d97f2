"""The platform's queue in front of a saturated agent, on a virtual clock: served by priority then
due time, nothing waits past its deadline without a recorded reason, and `overload: latest_only`
keeps only the newest due time of a task waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent_pipelines.agents.limiter import ConcurrencyGate, GradientLimiter, LimiterState, Permit
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.admission import (
    SATURATED,
    STILL_RUNNING,
    SUPERSEDED,
    Admission,
    Refusal,
    deadline_for,
    still_running,
)
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import status

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def task(name: str, **fields: Any) -> TaskSpec:
    spec = {"name": name, "owner": "team:ops", "agent": "claw", "prompt": "p", "schedule": {"every": "10s"}, "misfire": {"grace": "30s"}}
    return TaskSpec.model_validate(spec | fields)


def due(spec: TaskSpec, seconds: float, retry_number: int = 0, deadline: dt.datetime | None = None) -> WorkItem:
    moment = T0 + dt.timedelta(seconds=seconds)
    return WorkItem(spec, Trigger.scheduled(moment), moment.timestamp(), deadline=deadline, retry_number=retry_number)


def run(scenario: Callable[[ManualClock, Admission, ConcurrencyGate], Awaitable[None]], limit: int = 1, solo_s: float | None = None) -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        state = LimiterState(estimate=float(limit), baseline_s=1.0, recent_s=2.5, next_probe_at=1e12, solo_s=solo_s)
        gate = ConcurrencyGate(GradientLimiter(8, state=state), clock)
        await scenario(clock, Admission(clock), gate)

    asyncio.run(main())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_are_served_by_priority_then_due_time() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("first"), 0), "claw", gate)
        assert isinstance(holder, Permit)
        served: list[str] = []

        async def wait(item: WorkItem) -> None:
            permit = await admission.enter(item, "claw", gate)
            assert isinstance(permit, Permit)
            served.append(item.task.name)
            gate.release(permit)

        items = [due(task("later"), 5), due(task("sooner"), 1), due(task("vip", priority=10), 9), due(task("low", priority=-1), 0)]
        waiters = [asyncio.create_task(wait(i)) for i in items]
        await settle()
        assert admission.queued("claw") == 4 and gate.queued == 4
        gate.release(holder)
        await asyncio.gather(*waiters)
        assert served == ["vip", "sooner", "later", "low"]

    run(scenario)


def test_nothing_waits_past_its_deadline_without_a_reason() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("busy"), 0), "claw", gate)
        assert isinstance(holder, Permit)
        spec = task("digest")
        waiting = [asyncio.create_task(admission.enter(due(spec, 0), "claw", gate)), asyncio.create_task(admission.enter(due(task("other"), 0), "claw", gate))]
        await settle()
        assert admission.oldest_wait_s("claw") == 0.0
        clock.advance(29.9)
        await settle()
        assert not any(w.done() for w in waiting), "still within the misfire grace"
        clock.advance(0.1)
        refusals = await asyncio.gather(*waiting)
        assert all(isinstance(r, Refusal) and r.status == status.SKIPPED for r in refusals)
        reason = refusals[0].reason
        assert reason.startswith(SATURATED), reason
        for expected in ("30.0 s", "misfire grace 30 s", "queue length 2 waiting", "1 in flight", "limit 1", "max_concurrency 8", "latency 2.5 s"):
            assert expected in reason, (expected, reason)
        assert admission.skipped == {"claw": 2} and admission.queued("claw") == 0 and gate.queued == 0
        gate.release(holder)
        assert gate.in_flight == 0, "no permit was left behind by the refused waiters"

    run(scenario)


def test_the_reason_says_how_much_of_the_latency_is_other_clients_queue() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("busy"), 0), "claw", gate)
        waiting = asyncio.create_task(admission.enter(due(task("digest"), 0), "claw", gate))
        await settle()
        clock.advance(30.0)
        refusal = await waiting
        assert isinstance(refusal, Refusal) and isinstance(holder, Permit)
        assert "(without a queue 1.0 s; one request of ours beside other clients' queue 11.4 s)" in refusal.reason, refusal.reason
        gate.release(holder)

    run(scenario, solo_s=11.4)


def test_a_retry_waits_at_most_until_its_retry_deadline_and_then_fails() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        assert isinstance(await admission.enter(due(task("busy"), 0), "claw", gate), Permit)
        retry = due(task("flaky"), 0, retry_number=1, deadline=T0 + dt.timedelta(seconds=12))
        assert deadline_for(retry) == ((T0 + dt.timedelta(seconds=12)).timestamp(), "its retry deadline")
        waiting = asyncio.create_task(admission.enter(retry, "claw", gate))
        await settle()
        clock.advance(12)
        refusal = await waiting
        assert isinstance(refusal, Refusal) and refusal.status == status.FAILED and "its retry deadline" in refusal.reason

    run(scenario)


def test_latest_only_keeps_the_newest_due_time_waiting() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("busy"), 0), "claw", gate)
        assert isinstance(holder, Permit)
        spec = task("poll", overload="latest_only")
        first = asyncio.create_task(admission.enter(due(spec, 0), "claw", gate))
        await settle()
        clock.advance(10)
        second = asyncio.create_task(admission.enter(due(spec, 10), "claw", gate))
        replaced = await first
        assert isinstance(replaced, Refusal) and replaced.status == status.SKIPPED
        assert replaced.reason.startswith(SUPERSEDED) and "12:00:10" in replaced.reason, replaced.reason
        late_retry = await admission.enter(due(spec, 0, retry_number=1), "claw", gate)
        assert isinstance(late_retry, Refusal) and late_retry.status == status.FAILED and SUPERSEDED in late_retry.reason
        # Another run claimed a newer due time: the one waiting here is replaced too.
        admission.supersede({"poll": T0 + dt.timedelta(seconds=20)})
        replaced_again = await second
        assert isinstance(replaced_again, Refusal) and "12:00:20" in replaced_again.reason
        assert admission.latest_only_waiting() == [] and admission.skipped == {}, "superseded is not saturated"
        gate.release(holder)

    run(scenario)


def test_a_newer_due_time_takes_the_place_of_the_one_it_replaces() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("busy"), 0), "claw", gate)
        assert isinstance(holder, Permit)
        poll, report = task("poll", overload="latest_only"), task("report")
        served: list[str] = []

        async def wait(item: WorkItem) -> None:
            result = await admission.enter(item, "claw", gate)
            if isinstance(result, Permit):
                served.append(f"{item.task.name}@{item.trigger.due_time:%S}")
                gate.release(result)

        waiters = [asyncio.create_task(wait(due(poll, 0))), asyncio.create_task(wait(due(report, 5)))]
        await settle()
        waiters.append(asyncio.create_task(wait(due(poll, 10))))
        await settle()
        gate.release(holder)
        await asyncio.gather(*waiters)
        assert served == ["poll@10", "report@05"], "a task superseded while waiting is not always last"

    run(scenario)


def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    async def scenario(clock: ManualClock, admission: Admission, gate: ConcurrencyGate) -> None:
        holder = await admission.enter(due(task("busy"), 0), "claw", gate)
        assert isinstance(holder, Permit)
        waiting = asyncio.create_task(admission.enter(due(task("stopped"), 0), "claw", gate))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert admission.queued("claw") == 0 and gate.queued == 0
        gate.release(holder)
        assert gate.in_flight == 0

    run(scenario)


def test_latest_only_needs_a_recurring_schedule() -> None:
    with pytest.raises(ValueError, match="recurring `schedule`"):
        task("once", overload="latest_only", schedule={"at": "2026-12-01T09:00:00+00:00"})
    with pytest.raises(ValueError, match="recurring `schedule`"):
        TaskSpec.model_validate({"name": "evt", "owner": "team:ops", "agent": "claw", "prompt": "p", "overload": "latest_only"})
    assert task("cron", overload="latest_only", schedule="*/5 * * * *").overload == "latest_only"
    with pytest.raises(ValueError, match="skip_while_running.*recurring `schedule`"):
        task("once", overload="skip_while_running", schedule={"at": "2026-12-01T09:00:00+00:00"})


def test_one_at_a_time_refuses_a_due_time_while_an_earlier_one_is_in_flight() -> None:
    spec = task("poll", overload="skip_while_running")
    newer = due(spec, 10)
    earlier = newer.key.replace("12:00:10", "12:00:00")
    now = T0 + dt.timedelta(seconds=10.5)
    refusal = still_running(newer, {earlier: T0, newer.key: None}, now)
    assert refusal is not None and refusal.status == status.SKIPPED
    assert refusal.reason == f"{STILL_RUNNING}: its due time 2026-12-01T12:00:00.000Z has been in flight for 10.5 s (overload: skip_while_running)"
    assert still_running(newer, {newer.key: T0}, now) is None, "its own attempt is not an earlier one"
    assert still_running(due(spec, 10, retry_number=1), {earlier: T0}, now) is None, "a retry is not a new due time"
    assert still_running(due(task("poll", overload="latest_only"), 10), {earlier: T0}, now) is None
    waits = still_running(due(task("poll", overload="wait_while_running"), 10), {earlier: T0}, now, waited="waited 5 s")
    assert waits is not None and waits.reason.endswith("for 10.5 s (waited 5 s; overload: wait_while_running)")
