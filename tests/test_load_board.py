"""A run's `LoadBoard` continues an agent's limit from what the runs before it learned, as fresh
as when it first calls the agent: a window run starts ahead of its window while the run before
it goes on learning. On a real SQLite store, two boards as two window runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

from agent_pipelines.agents.limiter import ConcurrencyGate, GradientLimiter, LimiterState
from agent_pipelines.scheduling.admission import Admission
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.scheduling.load import LoadBoard
from agent_pipelines.store import StateStore

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def _board(store: StateStore, holder: str, clock: ManualClock) -> LoadBoard:
    return LoadBoard(store, holder, clock, Admission(clock), logging.getLogger(__name__))


def _gate(estimate: float, clock: ManualClock) -> ConcurrencyGate:
    limiter = GradientLimiter(10, state=LimiterState(estimate=estimate, baseline_s=2.0, next_probe_at=1e12))
    return ConcurrencyGate(limiter, clock)


def test_a_run_continues_from_what_the_run_before_it_learned_until_its_first_call(tmp_path: Path) -> None:
    store = StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")
    clock = ManualClock(T0)

    async def scenario() -> None:
        earlier = _board(store, "window-1200", clock)
        earlier.load(["claw"])
        earlier_gate = earlier.track("claw", _gate(6.0, clock))
        await earlier.sync()

        later = _board(store, "window-1201", clock)  # created ahead of its window
        later.load(["claw", "idle"])
        earlier_gate.limiter.state.estimate = 4.0  # the earlier run learns on meanwhile
        clock.set((T0 + dt.timedelta(seconds=30)).timestamp())
        await earlier.sync()
        await later.sync()

        gate = later.track("claw", _gate(10.0, clock))  # its first call to the agent
        assert gate.limiter.state.estimate == 4.0, "what the earlier run knew a second ago, not at this run's start"
        earlier_gate.limiter.state.estimate = 3.0
        clock.set((T0 + dt.timedelta(seconds=31)).timestamp())
        await earlier.sync()
        await later.sync()
        assert gate.limiter.state.estimate == 4.0, "once called, the run's own limiter goes on from there"

    asyncio.run(scenario())
    store.engine.dispose()
