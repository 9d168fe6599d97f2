"""When to wake an agent and when to let it sleep: pure functions of the clock, the agent's state,
its next due time and whether anything is in flight, so the controller, its tests and the
1,000-agent simulation (benchmarks/bench_lifecycle.py) all run the same rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from agent_pipelines.catalog.lifecycle import LifecycleSpec
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.timing import due_times
from agent_pipelines.store.lifecycle import ASLEEP, FAILED, READY, WAKING

#: A failed wake is tried again after this long (when work is still coming).
RETRY_FAILED_WAKE_S = 30.0
#: A due time that passed less than this long ago and has no execution yet keeps its agent up:
#: the run carrying it is late (a loaded machine, a slow run launch), not gone; the dispatcher
#: catches it up within a window (a minute).
AWAIT_LATE_DUE_S = 90.0

Action = Literal["wake", "sleep", "ready_timeout", "none"]


@dataclass(frozen=True)
class AgentView:
    state: str  # asleep, waking, ready, failed
    since: dt.datetime
    woke_at: dt.datetime | None
    last_used: dt.datetime | None  # its executions last changed
    busy: bool  # something is claimed, in flight or waiting to retry
    awaited: tuple[dt.datetime, str] | None = None  # a due time just passed with no execution yet


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str


def next_due(tasks: Iterable[TaskSpec], now: dt.datetime, horizon: dt.timedelta) -> tuple[dt.datetime, str] | None:
    """The earliest due time (and its task) of `tasks` within `horizon` from `now`."""
    best: tuple[dt.datetime, str] | None = None
    for task in tasks:
        if task.schedule is None or not task.enabled:
            continue
        first = next(due_times(task.schedule, now, now + horizon), None)
        if first is not None and (best is None or first < best[0]):
            best = (first, task.name)
    return best


def just_due(tasks: Iterable[TaskSpec], now: dt.datetime) -> list[tuple[dt.datetime, str]]:
    """Each enabled scheduled task's latest due time within the last `AWAIT_LATE_DUE_S`: the
    due times whose execution should exist by now (the controller looks for it)."""
    since = now - dt.timedelta(seconds=AWAIT_LATE_DUE_S)
    found: list[tuple[dt.datetime, str]] = []
    for task in tasks:
        if task.schedule is None or not task.enabled:
            continue
        latest = None
        for latest in due_times(task.schedule, since, now + dt.timedelta(microseconds=1)):
            pass
        if latest is not None:
            found.append((latest, task.name))
    return found


def horizon(spec: LifecycleSpec) -> dt.timedelta:
    """How far ahead due times matter: a wake `lead` ahead, or staying up through `idle_after`."""
    return dt.timedelta(seconds=spec.lead + spec.idle_after + 60)


def decide(spec: LifecycleSpec, view: AgentView, now: dt.datetime, upcoming: tuple[dt.datetime, str] | None) -> Decision:
    lead = dt.timedelta(seconds=spec.lead)
    if view.state in (ASLEEP, FAILED):
        if view.state == FAILED and (now - view.since).total_seconds() < RETRY_FAILED_WAKE_S:
            return Decision("none", "the last wake failed: waiting before trying again")
        if view.busy:
            return Decision("wake", "work is waiting for it")
        if upcoming is not None and upcoming[0] - lead <= now:
            due, task = upcoming
            return Decision("wake", f"{task} is due at {due.isoformat(timespec='seconds')} (lead {spec.lead:g} s)")
        return Decision("none", "nothing due within its lead")
    if view.state == WAKING and view.woke_at is not None and (now - view.woke_at).total_seconds() > spec.ready.timeout:
        return Decision("ready_timeout", f"not ready {spec.ready.timeout:g} s after the wake")
    if view.state not in (WAKING, READY):
        return Decision("none", f"state {view.state}")
    if view.busy:
        return Decision("none", "work in flight")
    if view.awaited is not None:
        due, task = view.awaited
        return Decision("none", f"{task} was due at {due.isoformat(timespec='seconds')} and its execution has not started yet")
    if upcoming is not None and upcoming[0] <= now + lead + dt.timedelta(seconds=spec.idle_after):
        return Decision("none", f"{upcoming[1]} is due at {upcoming[0].isoformat(timespec='seconds')}")
    woke = view.woke_at or view.since
    if (now - woke).total_seconds() < spec.min_up:
        return Decision("none", f"up for less than min_up ({spec.min_up:g} s)")
    idle_since = max(woke, view.last_used) if view.last_used is not None else woke
    idle = (now - idle_since).total_seconds()
    if idle < spec.idle_after:
        return Decision("none", f"idle for {idle:.0f} s of {spec.idle_after:g} s")
    return Decision("sleep", f"idle for {idle:.0f} s and nothing due within {spec.lead + spec.idle_after:g} s")
