"""One agent's load across every run that calls it, through the store.

Several runs may call one agent at once (a window's run finishing while the next one starts, a
catch-up, a manual run). Each run's dispatcher keeps a `LoadBoard`: every second it writes its
view of each agent it calls (limit, in flight, waiting, latency, the limiter's state) and reads
the others' fresh views back, so its gate counts what the other runs have in flight against the
agent's one limit, and a newer due time of a `latest_only` task claimed by another run replaces
an older one waiting here. A run starts from the newest learned state of each agent, so the limit
carries over from one window's run to the next. The sensor and the CLI read the same rows
(`summarize`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_pipelines.agents.limiter import ConcurrencyGate, LimiterState, others_queue_note
from agent_pipelines.scheduling.admission import Admission
from agent_pipelines.scheduling.task_turns import TaskTurns
from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.store import AgentLoad, StateStore

#: How often a run writes its view and reads the others'.
SYNC_EVERY_S = 1.0
#: A view older than this is a run that ended or died: its requests no longer count.
FRESH_S = 10.0
#: A learned state older than this is not restored (the agent may have changed): start afresh.
RESTORE_WITHIN = dt.timedelta(hours=6)
#: Views of ended runs are kept this long (each agent's newest is always kept).
KEEP_FOR = dt.timedelta(days=1)
#: An agent is saturated while an execution has waited this long for it, or one waited past its
#: deadline this recently.
SATURATED_WAIT_S = 15.0
SATURATED_FOR = dt.timedelta(minutes=2)


class LoadBoard:
    """This run's gates, shared with the other runs through the store."""

    def __init__(
        self, store: StateStore, holder: str, clock: Clock, admission: Admission, log: logging.Logger | Any, turns: TaskTurns | None = None
    ) -> None:
        self.store = store
        self.holder = holder
        self.clock = clock
        self.admission = admission
        self.turns = turns  # `wait_while_running` due times, replaced by newer ones as `latest_only` waiters are
        self.log = log
        self._gates: dict[str, ConcurrencyGate] = {}
        self._learned: dict[str, LimiterState] = {}
        self._forgotten_at = float("-inf")
        self._watched: list[str] = []

    def load(self, agents: Iterable[str]) -> None:
        """Read the newest learned state of each agent (blocking: at the run's start). Until this
        run first calls an agent, each sync reads it again: a window run starts ahead of its
        window, and the run before it goes on learning meanwhile (a minute of learning lost at
        every hand-over otherwise)."""
        self._watched = sorted(set(agents))
        since = self.clock.now() - RESTORE_WITHIN
        for row in self.store.agent_loads(self._watched, since=since):  # newest first
            if row.agent not in self._learned and row.state:
                self._learned[row.agent] = LimiterState.from_json(row.state)

    def track(self, agent: str, gate: ConcurrencyGate) -> ConcurrencyGate:
        """The gate of `agent` in this run, continuing from its learned state (on the loop)."""
        if self._gates.get(agent) is not gate:
            gate.clock = self.clock
            learned = self._learned.get(agent)
            if learned is not None:
                gate.limiter.restore(learned)
            self._gates[agent] = gate
        return gate

    async def run(self) -> None:
        """Sync every second until cancelled; a failing store is logged and tried again."""
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the views are advisory: sending goes on without them
                self.log.exception("could not share agent load through the store")

    async def sync(self, final: bool = False) -> None:
        views = self._views(final)
        waiting = {*self.admission.latest_only_waiting(), *(self.turns.waiting_tasks() if self.turns else ())}
        not_called = [agent for agent in self._watched if agent not in self._gates]
        elsewhere, newest, learned = await asyncio.to_thread(self._exchange, views, sorted(waiting), not_called)
        for agent, state in learned.items():
            if agent not in self._gates:  # called meanwhile: its gate restored what it had
                self._learned[agent] = state
        for agent, gate in self._gates.items():
            if gate.elsewhere != elsewhere.get(agent, 0):
                gate.elsewhere = elsewhere.get(agent, 0)
                gate.wake()
        if newest:
            self.admission.supersede(newest)
            if self.turns is not None:
                self.turns.supersede(newest)

    def _views(self, final: bool) -> list[AgentLoad]:
        now = self.clock.now()
        views = []
        for agent, gate in self._gates.items():
            limiter = gate.limiter
            views.append(
                AgentLoad(
                    agent=agent,
                    holder=self.holder,
                    limit=gate.limit,
                    max_limit=limiter.max_limit,
                    in_flight=0 if final else gate.in_flight,
                    queued=0 if final else self.admission.queued(agent),
                    updated_at=now,
                    oldest_wait_s=None if final else self.admission.oldest_wait_s(agent),
                    latency_ms=_ms(limiter.recent_s),
                    baseline_ms=_ms(limiter.baseline_s),
                    sent=gate.sent,
                    overloads=gate.overloads,
                    skipped=self.admission.skipped.get(agent, 0),
                    last_skip_at=self.admission.last_skip_at.get(agent),
                    state=limiter.state.to_json(),
                )
            )
        return views

    def _exchange(
        self, views: Sequence[AgentLoad], latest_only: Sequence[str], not_called: Sequence[str] = ()
    ) -> tuple[dict[str, int], dict[str, dt.datetime], dict[str, LimiterState]]:
        """Write our views; read the others' requests in flight to the agents we call, the
        newest learned state of those we have not called yet, and newer due times of waiting
        tasks: one read of the views for both."""
        now = self.clock.now()
        self.store.record_agent_load(views)
        elsewhere: dict[str, int] = {}
        learned: dict[str, LimiterState] = {}
        called = {v.agent for v in views}
        if called or not_called:
            for row in self.store.agent_loads(sorted(called | set(not_called)), since=now - dt.timedelta(seconds=FRESH_S)):  # newest first
                if row.agent in called:
                    if row.holder != self.holder:
                        elsewhere[row.agent] = elsewhere.get(row.agent, 0) + row.in_flight
                elif row.agent not in learned and row.state:
                    learned[row.agent] = LimiterState.from_json(row.state)
        newest = self.store.newest_due_times(latest_only, now) if latest_only else {}
        if self.clock.time() - self._forgotten_at > 600:
            self._forgotten_at = self.clock.time()
            self.store.forget_agent_loads(now - KEEP_FOR)
        return elsewhere, newest, learned


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


@dataclass(frozen=True)
class LoadSummary:
    """An agent's load across every run, as the sensor and the CLI show it."""

    agent: str
    limit: int
    max_limit: int
    in_flight: int
    queued: int
    oldest_wait_s: float | None
    latency_ms: float | None
    baseline_ms: float | None
    skipped: int  # by the runs seen (counts since each run started)
    last_skip_at: dt.datetime | None
    updated_at: dt.datetime
    saturated: bool
    #: latency of one request of ours beside other clients' queue (the limiter's fitted line)
    solo_ms: float | None = None
    #: the limit is 1 while the newest view measures the agent's latency one request at a time
    measuring_baseline: bool = False

    def describe(self) -> str:
        latency = f"{self.latency_ms / 1000:.1f} s" if self.latency_ms is not None else "unknown"
        text = (
            f"{self.in_flight} in flight at limit {self.limit} (max {self.max_limit}"
            + ("; measuring its latency one request at a time" if self.measuring_baseline else "")
            + f"), {self.queued} waiting"
            + (f" (oldest {self.oldest_wait_s:.0f} s)" if self.oldest_wait_s else "")
            + f", latency {latency}"
        )
        beside = others_queue_note(_seconds(self.baseline_ms), _seconds(self.solo_ms))
        if beside:
            text += f" ({beside})"
        if self.last_skip_at is not None:
            text += f"; last skipped for saturation {self.last_skip_at.isoformat(timespec='seconds')}"
        return text


def summarize(rows: Iterable[AgentLoad], now: dt.datetime) -> dict[str, LoadSummary]:
    """Per agent: requests in flight and waiting in every fresh view, the newest view's limit and
    latency, and whether the agent is saturated (something waited `SATURATED_WAIT_S`, or waited
    past its deadline within `SATURATED_FOR`)."""
    by_agent: dict[str, list[AgentLoad]] = {}
    for row in rows:
        by_agent.setdefault(row.agent, []).append(row)
    fresh_since = now - dt.timedelta(seconds=FRESH_S)
    summaries = {}
    for agent, views in by_agent.items():
        newest = max(views, key=lambda v: v.updated_at)
        fresh = [v for v in views if v.updated_at >= fresh_since]
        waits = [v.oldest_wait_s for v in fresh if v.oldest_wait_s is not None]
        skips = [v.last_skip_at for v in views if v.last_skip_at is not None]
        last_skip = max(skips) if skips else None
        oldest = max(waits) if waits else None
        saturated = (oldest is not None and oldest >= SATURATED_WAIT_S) or (last_skip is not None and now - last_skip <= SATURATED_FOR)
        summaries[agent] = LoadSummary(
            agent=agent,
            limit=newest.limit,
            max_limit=newest.max_limit,
            in_flight=sum(v.in_flight for v in fresh),
            queued=sum(v.queued for v in fresh),
            oldest_wait_s=oldest,
            latency_ms=newest.latency_ms,
            baseline_ms=newest.baseline_ms,
            skipped=sum(v.skipped for v in views),
            last_skip_at=last_skip,
            updated_at=newest.updated_at,
            saturated=saturated,
            solo_ms=_ms(newest.state.get("solo_s")),  # two keys of the limiter's state, not its whole answer window
            measuring_baseline=bool(newest.state.get("probing")),
        )
    return summaries


def node_saturated(load: LoadSummary) -> bool:
    """A fleet node is saturated as an agent is (executions waited too long for it, or past
    their deadline), or when it is kept busy at a limit its latency or errors cut below its
    `max_concurrency`. A batch's items always wait for their node (that is how a batch runs),
    so for batch nodes the wait alone says nothing: the cut limit says the node cannot take
    what it was configured for. The baseline probe's limit of 1 is not a cut."""
    held_back = load.limit < load.max_limit and not load.measuring_baseline and load.in_flight >= load.limit
    return load.saturated or held_back


def agent_loads(store: StateStore, agents: Sequence[str], now: dt.datetime) -> Mapping[str, LoadSummary]:
    return summarize(store.agent_loads(list(agents), since=now - KEEP_FOR), now)
