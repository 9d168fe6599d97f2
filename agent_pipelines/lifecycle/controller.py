"""Wakes agents before they are needed and lets them sleep after: one tick every few seconds
(`agent_lifecycle_sensor`), plus a wake on demand when work finds its agent asleep (`gate`).

State lives in the store (`agent_pipelines_agent_lifecycle`) and moves only by conditional
updates, so two callers never wake or stop one agent twice: asleep -> waking (the wake call
is made) -> ready (its ready check answered) -> draining (the sleep call is made) -> asleep; a
wake that fails or is not ready in time ends in `failed`, tried again when work is coming.
Every move is recorded with its reason in `agent_pipelines_lifecycle_events`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent_pipelines.catalog.lifecycle import LifecycleSpec
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import AgentSpecBase, TaskSpec
from agent_pipelines.lifecycle.backends import Backend, LifecycleError, backend_for
from agent_pipelines.lifecycle.decisions import AgentView, decide, horizon, just_due, next_due
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import StateStore
from agent_pipelines.store.lifecycle import ASLEEP, FAILED, READY, WAKING, LifecycleState

DRAINING = "draining"
#: Backend calls and ready checks of one tick run side by side, this many at a time.
PARALLEL_CALLS = 16
READY_CHECK_TIMEOUT_S = 3.0

log = logging.getLogger(__name__)


def managed_agents(catalog: Catalog) -> dict[str, LifecycleSpec]:
    return {name: agent.lifecycle for name, agent in catalog.agents.items() if agent.lifecycle is not None}


@dataclass
class TickReport:
    woken: list[tuple[str, str]] = field(default_factory=list)  # agent, why
    slept: list[tuple[str, str]] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class LifecycleController:
    def __init__(
        self,
        catalog: Catalog,
        store: StateStore,
        clock: Clock = SYSTEM_CLOCK,
        backends: Mapping[str, Backend] | None = None,
        ready_check: Callable[[str], bool] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock
        self.specs = managed_agents(catalog)
        self.backends = dict(backends) if backends is not None else {name: backend_for(spec) for name, spec in self.specs.items()}
        self.ready_check = ready_check or (lambda agent: is_ready(catalog.agents[agent]))
        self.tasks_of: dict[str, list[TaskSpec]] = {name: [] for name in self.specs}
        for task in catalog.regular_tasks.values():
            if task.agent in self.tasks_of:
                self.tasks_of[task.agent].append(task)

    def tick(self, also_busy: Collection[str] = ()) -> TickReport:
        """`also_busy`: agents with work the store does not see (a batch run in progress)."""
        report = TickReport()
        if not self.specs:
            return report
        now = self.clock.now()
        states = self.store.lifecycle_states()
        busy = self.store.agents_in_flight(list(self.specs)) | set(also_busy)
        used = self.store.last_used(list(self.specs))
        awake = [agent for agent, state in states.items() if agent in self.specs and state.state in (WAKING, READY)]
        awaited = self._awaited(now, [agent for agent in awake if agent not in busy])
        jobs: list[Callable[[], None]] = []
        for agent, spec in self.specs.items():
            state = states.get(agent) or LifecycleState(agent, ASLEEP, now)
            if state.state in (WAKING, READY) and not self.backends[agent].alive(state.process):
                self.store.move_lifecycle(agent, ASLEEP, expect=[state.state], at=now, event="exited", detail=f"its process {state.process} exited", process=None)
                state = LifecycleState(agent, ASLEEP, now)
            view = AgentView(state.state, state.since, state.woke_at, used.get(agent), agent in busy, awaited.get(agent))
            decision = decide(spec, view, now, next_due(self.tasks_of[agent], now, horizon(spec)))
            if decision.action == "wake":
                jobs.append(lambda agent=agent, why=decision.why, expect=state.state: self._wake(agent, why, expect, report))
            elif decision.action == "sleep":
                jobs.append(lambda agent=agent, why=decision.why, state=state: self._sleep(agent, why, state, report))
            elif decision.action == "ready_timeout":
                if self.store.move_lifecycle(agent, FAILED, expect=[WAKING], at=now, event="wake_failed", detail=decision.why):
                    report.failed.append((agent, decision.why))
            elif state.state == WAKING:
                jobs.append(lambda agent=agent: self._check_ready(agent, report))
        if jobs:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_CALLS, len(jobs)), thread_name_prefix="agent-lifecycle") as pool:
                list(pool.map(lambda job: job(), jobs))
        return report

    def _awaited(self, now: dt.datetime, agents: Collection[str]) -> dict[str, tuple[dt.datetime, str]]:
        """Per agent, its earliest due time just passed that has no execution yet: the run carrying
        it is late, and sleeping the agent now would only make that execution wake it cold."""
        candidates = {
            Trigger.scheduled(due).idempotency_key(task): (agent, due, task) for agent in agents for due, task in just_due(self.tasks_of[agent], now)
        }
        if not candidates:
            return {}
        found = self.store.statuses(list(candidates))
        awaited: dict[str, tuple[dt.datetime, str]] = {}
        for key, (agent, due, task) in candidates.items():
            if key not in found and (agent not in awaited or due < awaited[agent][0]):
                awaited[agent] = (due, task)
        return awaited

    def wake_now(self, agent: str, why: str) -> bool:
        """Wake `agent` if it is asleep (a task found it cold); False when it was not asleep."""
        return self._wake(agent, why, None, TickReport())

    def _wake(self, agent: str, why: str, expect: str | None, report: TickReport) -> bool:
        now = self.clock.now()
        if not self.store.move_lifecycle(agent, WAKING, expect=[expect] if expect else [ASLEEP, FAILED], at=now, event="wake", detail=why, woke_at=now, process=None):
            return False
        try:
            woken = self.backends[agent].wake(agent)
        except LifecycleError as error:
            self.store.move_lifecycle(agent, FAILED, expect=[WAKING], at=self.clock.now(), event="wake_failed", detail=str(error))
            report.failed.append((agent, str(error)))
            log.warning("%s", error)
            return True
        if woken.process:
            self.store.move_lifecycle(agent, WAKING, expect=[WAKING], detail=why, process=woken.process, woke_at=now, at=now)
        report.woken.append((agent, why))
        self._check_ready(agent, report)
        return True

    def _check_ready(self, agent: str, report: TickReport) -> None:
        if self.ready_check(agent) and self.store.move_lifecycle(
            agent, READY, expect=[WAKING], at=self.clock.now(), event="ready", detail="its ready check answered"
        ):
            report.ready.append(agent)

    def mark_ready(self, agent: str) -> bool:
        return self.store.move_lifecycle(agent, READY, expect=[WAKING, FAILED], at=self.clock.now(), event="ready", detail="its ready check answered")

    def _sleep(self, agent: str, why: str, state: LifecycleState, report: TickReport) -> None:
        if not self.store.move_lifecycle(agent, DRAINING, expect=[state.state], at=self.clock.now(), detail=why, woke_at=state.woke_at, process=state.process):
            return
        try:
            self.backends[agent].sleep(agent, state.process)
        except LifecycleError as error:
            self.store.move_lifecycle(
                agent, READY, expect=[DRAINING], at=self.clock.now(), event="sleep_failed", detail=str(error), woke_at=state.woke_at, process=state.process
            )
            report.failed.append((agent, str(error)))
            return
        self.store.move_lifecycle(agent, ASLEEP, expect=[DRAINING], at=self.clock.now(), event="sleep", detail=why, process=None)
        report.slept.append((agent, why))


def is_ready(agent: AgentSpecBase) -> bool:
    """The lifecycle's `ready.url` answers 2xx, or else the agent's own health check passes."""
    spec = agent.lifecycle
    if spec is not None and spec.ready.url:
        try:
            return httpx.get(spec.ready.url, timeout=READY_CHECK_TIMEOUT_S).status_code < 300
        except httpx.HTTPError:
            return False
    from agent_pipelines.agents.pool import AgentPool

    async def probe() -> Any:
        async with AgentPool({agent.name: agent}) as pool:
            return await pool.probe(agent.name, timeout_s=READY_CHECK_TIMEOUT_S)

    return asyncio.run(probe()) is None


def agent_hours(events: list[Any], until: dt.datetime, since: dt.datetime | None = None) -> dict[str, float]:
    """Hours each agent was up (from each wake to the sleep or exit that followed) within
    [since, until], from `lifecycle_events` oldest first."""
    up_since: dict[str, dt.datetime] = {}
    hours: dict[str, float] = {}

    def add(agent: str, start: dt.datetime, end: dt.datetime) -> None:
        start = max(start, since) if since is not None else start
        if end > start:
            hours[agent] = hours.get(agent, 0.0) + (end - start).total_seconds() / 3600

    for event in events:
        if event.event == "wake" and event.agent not in up_since:
            up_since[event.agent] = event.at
        elif event.event in ("sleep", "exited", "wake_failed") and event.agent in up_since:
            add(event.agent, up_since.pop(event.agent), event.at)
    for agent, start in up_since.items():
        add(agent, start, until)
    return hours
