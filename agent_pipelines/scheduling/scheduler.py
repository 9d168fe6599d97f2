"""The scheduler behind `task_scheduler_sensor`: every time-triggered task, exactly once per due
time, and every execution accounted for.

Each tick (the sensor daemon's floor is 5 s):
1. requests the *window runs* of the windows starting within `LEAD`, one run key per window and
   chunk, so a repeated or resumed tick never creates a run twice (live work: high priority);
2. rescues a window whose run is gone (killed, failed): a due time still unsent a few seconds
   after its instant, while no live run carries its window, gets a new run for that window, as
   often as it takes;
3. applies each task's misfire policy to due times nobody sent by `due + grace` (the platform
   was down): `missed` with the reason, or `catchup`;
4. settles runs that ended while holding executions (Dagster failed them, they were stopped, or
   their heartbeat stopped): unsent claims become `not_sent` (re-sent while worth it), requests
   in flight `unknown`, pending retries wait for another carrier;
5. requests one catch-up run (low priority) for everything waiting for a carrier;
6. launches "run now" requests; reports results whose run died before publishing them.
The cursor remembers how far planning and reconciliation got; it lives in Dagster's storage.
Nothing before a task first existed is ever planned, rescued or called missed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.grouping import op_of
from agent_pipelines.kubernetes_config import run_tags as kubernetes_run_tags
from agent_pipelines.kubernetes_config import task_block
from agent_pipelines.scheduling.ended_runs import settle_ended_runs
from agent_pipelines.scheduling.liveness import dead_started_runs, fail_dead_runs, stalled_starts
from agent_pipelines.scheduling.planning import (
    LEAD,
    WINDOW,
    DueIndex,
    due_index,
    listener_tasks,
    max_runtime_seconds,
    timed_tasks,
    window_floor,
    window_runs,
)
from agent_pipelines.scheduling.plans import worth_carrying
from agent_pipelines.scheduling.publication import republication
from agent_pipelines.scheduling.timing import format_due, parse_due
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import Claim, StateStore, status

log = logging.getLogger(__name__)

SENSOR_NAME = "task_scheduler_sensor"
SCHEDULED_JOB = "scheduled_tasks_job"
CATCHUP_JOB = "catchup_tasks_job"
MANUAL_JOB = "agent_tasks_job"
#: How long after its due time an unsent execution means its window's run is gone.
RESCUE_AFTER = dt.timedelta(seconds=3)
#: A gap between ticks longer than this means the scheduler (the daemon) was not running.
DOWN_AFTER = dt.timedelta(seconds=30)
#: Results recorded this long ago but never shown in Dagster are reported by the scheduler.
REPUBLISH_AFTER = dt.timedelta(seconds=30)
#: Run heartbeats are kept this long (a run silent longer is dead either way), pruned this often.
BEATS_KEPT = dt.timedelta(hours=1)
BEAT_PRUNE_EVERY = dt.timedelta(minutes=5)
#: A catch-up run STARTING longer than this lost its launch (killed with the daemon that made
#: it); it is failed so the next one can start (Dagster's own start timeout is longer).
CATCHUP_START_TIMEOUT = dt.timedelta(seconds=45)
LIVE_PRIORITY = "10"
CATCHUP_PRIORITY = "-10"
WAITING = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
UNFINISHED = (*WAITING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


@dataclass
class SchedulerCursor:
    planned_until: dt.datetime | None = None
    reconciled_until: dt.datetime | None = None
    #: starts of the recent windows that got runs (a rescue looks only at these)
    windows: list[dt.datetime] = field(default_factory=list)
    last_tick: dt.datetime | None = None
    #: the scheduler's known down times (start, end), newest last: reasons for missed due times
    downtimes: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)
    #: tasks whose latest reconciled due time was missed -> catch-ups issued in that episode
    episodes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> SchedulerCursor:
        if not raw:
            return cls()
        data = json.loads(raw)

        def moment(name: str) -> dt.datetime | None:
            return parse_due(data[name]) if data.get(name) else None

        return cls(
            planned_until=moment("planned_until"),
            reconciled_until=moment("reconciled_until"),
            windows=[parse_due(w) for w in data.get("windows") or []],
            last_tick=moment("last_tick"),
            downtimes=[(parse_due(a), parse_due(b)) for a, b in data.get("downtimes") or []],
            episodes=dict(data.get("episodes") or {}),
        )

    def dump(self) -> str:
        def text(value: dt.datetime | None) -> str | None:
            return format_due(value) if value else None

        return json.dumps(
            {
                "planned_until": text(self.planned_until),
                "reconciled_until": text(self.reconciled_until),
                "windows": [format_due(w) for w in self.windows],
                "last_tick": text(self.last_tick),
                "downtimes": [[format_due(a), format_due(b)] for a, b in self.downtimes[-20:]],
                "episodes": self.episodes,
            }
        )

    def down_during(self, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
        return next(((a, b) for a, b in self.downtimes if a <= moment <= b), None)


@dataclass
class TickReport:
    """What a tick did beyond requesting runs, for the sensor's log."""

    settled_runs: list[tuple[str, str, int]] = field(default_factory=list)  # run id, why, executions
    republished: int = 0
    expired: int = 0


#: (store URL, catalog fingerprint) -> when each task was first seen (fixed once registered)
_FIRST_SEEN: dict[tuple[str, str], dict[str, dt.datetime]] = {}


class Scheduler:
    """One tick's work, separate from the sensor so tests can drive it with their own clock."""

    def __init__(self, catalog: Catalog, store: StateStore) -> None:
        self.catalog = catalog
        self.store = store
        self.listeners = [t.name for t in listener_tasks(catalog)]
        graces = [t.misfire.grace for t in timed_tasks(catalog)]
        self.max_grace = dt.timedelta(seconds=max(graces, default=60.0))
        self.report = TickReport()
        self._first_seen: dict[str, dt.datetime] = {}

    def tick(self, cursor: SchedulerCursor, now: dt.datetime, instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], SchedulerCursor]:
        # The cursor keeps milliseconds; so must every position derived from `now`, or the
        # cached due indexes would never match the next tick's cursor and be rebuilt each time.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._note_downtime(cursor, now)
        self._first_seen = self._register(now)
        paused = self.store.paused_tasks()
        self._settle_ended_runs(instance, now)
        requests = self._rescue(cursor, now, paused, instance)  # windows planned by earlier ticks
        requests += self._plan(cursor, now, paused)
        self._reconcile(cursor, now, paused)
        self._reconcile_released(cursor, now, paused)
        self.report.expired = len(self.store.expire_waiting(now))
        requests += self._catchup_run(instance, now)
        requests += self._run_now(instance)
        self.report.republished = self._republish(instance, now)
        self._prune_beats(cursor, now)
        cursor.last_tick = now
        unique = {request.run_key: request for request in requests}
        return list(unique.values()), cursor

    def _note_downtime(self, cursor: SchedulerCursor, now: dt.datetime) -> None:
        if cursor.last_tick is not None and now - cursor.last_tick > DOWN_AFTER:
            cursor.downtimes.append((cursor.last_tick, now))

    def _register(self, now: dt.datetime) -> dict[str, dt.datetime]:
        """When each task first existed (registered on the first tick that sees it)."""
        key = (self.store.url, self.catalog.fingerprint())
        if key not in _FIRST_SEEN:
            _FIRST_SEEN[key] = self.store.register_tasks(list(self.catalog.regular_tasks), now)
        return _FIRST_SEEN[key]

    def _since(self, task: TaskSpec, moment: dt.datetime) -> bool:
        first = self._first_seen.get(task.name)
        return first is not None and moment >= first

    # -- 1. window runs ---------------------------------------------------------------------------

    def _plan(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str]) -> list[dg.RunRequest]:
        current = window_floor(now)
        start = max(cursor.planned_until or current, current)
        horizon = now + LEAD
        requests: list[dg.RunRequest] = []
        index = due_index(self.catalog, "plan", start)
        while start < horizon:
            due = [t.name for t, d in index.pop_until(start + WINDOW) if t.name not in paused and self._since(t, d)]
            planned = self._window_requests(start, due, paused)
            if planned:
                cursor.windows.append(start)
            requests += planned
            start += WINDOW
        cursor.planned_until = start
        return requests

    def _window_requests(self, start: dt.datetime, due: Sequence[str], paused: set[str], rescue: str = "") -> list[dg.RunRequest]:
        end = start + WINDOW
        listeners = [n for n in self.listeners if n not in paused]
        requests = []
        for run in window_runs(self.catalog, start, sorted(set(due)), listeners):
            run_tags = {
                tags.WINDOW_START: format_due(start),
                tags.WINDOW_END: format_due(end),
                tags.TRIGGER: "schedule",
                tags.PRIORITY: LIVE_PRIORITY,
                tags.MAX_RUNTIME: str(max_runtime_seconds(self.catalog, run.tasks, (LEAD + WINDOW).total_seconds())),
                **self._carried_tags(run.tasks),
            }
            if rescue:
                run_tags[tags.RESCUE] = "true"
            requests.append(
                dg.RunRequest(
                    run_key=f"{run.run_key}:rescue:{rescue}" if rescue else run.run_key,
                    job_name=SCHEDULED_JOB,
                    run_config={
                        "ops": {
                            "send_scheduled_tasks": {
                                "config": {"window_start": format_due(start), "window_end": format_due(end), "tasks": list(run.tasks)}
                            }
                        }
                    },
                    tags=run_tags,
                )
            )
        return requests

    def _carried_tags(self, names: Sequence[str]) -> dict[str, str]:
        agents = sorted({self.catalog.tasks[n].agent or "" for n in names})
        carried = {tags.TASKS: tags.summary(sorted(names)), tags.AGENTS: tags.summary(agents)}
        carried |= kubernetes_run_tags(task_block(self.catalog, n) for n in sorted(names))
        if len(names) == 1:
            task = self.catalog.tasks[names[0]]
            carried |= {tags.TASK: task.name, tags.AGENT: task.agent or "", tags.OWNER: tags.owner_label(task.owner)}
        return carried

    # -- 2. rescue --------------------------------------------------------------------------------

    def _rescue(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str], instance: dg.DagsterInstance) -> list[dg.RunRequest]:
        """A window whose runs are all gone while it still has unsent due times (a few seconds
        past their instant, within their grace) gets a new run, as often as that happens. So
        does a window planned ahead whose run died before the window began (killed with the
        daemon and code server): its replacement starts ahead too, and nothing is missed."""
        oldest = now - self.max_grace - WINDOW
        cursor.windows = [w for w in cursor.windows if w >= oldest]
        requests = []
        for window in cursor.windows:
            until = min(window + WINDOW, now - RESCUE_AFTER)
            if until <= window:
                if not self._ended_early(instance, window, now):
                    continue
                until = window + WINDOW  # ahead of time: the whole window
            carried = self._carried_in(instance, window, now)
            if carried is None:
                continue  # a run of the window is on its way: it carries whatever is due
            due = [
                (t, d)
                for t, d in DueIndex([t for t in timed_tasks(self.catalog) if t.name not in carried], window).pop_until(until)
                if t.name not in paused and self._since(t, d) and now.timestamp() <= d.timestamp() + t.misfire.grace
            ]
            keys = {Trigger.scheduled(d).idempotency_key(t.name): t.name for t, d in due}
            statuses = self.store.statuses(list(keys))
            stranded = sorted({name for key, name in keys.items() if statuses.get(key) in (None, status.NOT_SENT)})
            if stranded:
                log.warning("window %s has %d task(s) with unsent due times and no live run: rescuing them", format_due(window), len(stranded))
                requests += self._window_requests(window, stranded, paused, rescue=format_due(now))
        return requests

    def _ended_early(self, instance: dg.DagsterInstance, start: dt.datetime, now: dt.datetime) -> bool:
        """A run of this (future) window has already ended: failed, canceled, or died STARTED
        (killed with its machine while it waited for the window; failed here)."""
        statuses = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.STARTED]
        records = instance.get_run_records(dg.RunsFilter(tags={tags.WINDOW_START: format_due(start)}, statuses=statuses), limit=100)
        dead = dead_started_runs(self.store, records, now)
        fail_dead_runs(instance, self.store, records, dead)
        return len(dead) > 0 or any(r.dagster_run.status != dg.DagsterRunStatus.STARTED for r in records)

    def _carried_in(self, instance: dg.DagsterInstance, start: dt.datetime, now: dt.datetime) -> set[str] | None:
        """The tasks a live run of the window carries; None when a run of it is still on its way
        (queued or starting). Dead runs of the window are failed."""
        records = instance.get_run_records(dg.RunsFilter(tags={tags.WINDOW_START: format_due(start)}, statuses=list(UNFINISHED)), limit=100)
        if any(r.dagster_run.status != dg.DagsterRunStatus.STARTED for r in records):
            return None
        dead = dead_started_runs(self.store, records, now)
        fail_dead_runs(instance, self.store, records, dead)
        carried: set[str] = set()
        for record in records:
            run = record.dagster_run
            if run.run_id not in dead:
                config = run.run_config.get("ops", {}).get("send_scheduled_tasks", {}).get("config", {})
                carried.update(config.get("tasks") or [t.name for t in timed_tasks(self.catalog)])
        return carried

    # -- 3. misfires ------------------------------------------------------------------------------

    def _reconcile(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str]) -> None:
        until = now - self.max_grace
        since = cursor.reconciled_until or until  # nothing to catch up from before we existed
        cursor.reconciled_until = max(since, until)
        if until <= since:
            return
        due = [
            (t, d)
            for t, d in due_index(self.catalog, "reconcile", since).pop_until(until)
            if t.name not in paused and self._since(t, d) and now.timestamp() > d.timestamp() + t.misfire.grace
        ]
        if not due:
            return
        keys = {Trigger.scheduled(d).idempotency_key(t.name): (t, d) for t, d in due}
        statuses = self.store.statuses(list(keys))
        by_task: dict[str, list[tuple[dt.datetime, bool]]] = defaultdict(list)
        for key, (task, when) in keys.items():
            by_task[task.name].append((when, statuses.get(key) in (None, status.NOT_SENT)))
        claims: list[Claim] = []
        for name, items in by_task.items():
            claims += self._apply_policy(self.catalog.tasks[name], sorted(items), cursor)
        self.store.decide(claims)

    def _reconcile_released(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str]) -> None:
        """Due times a dead run had claimed but not sent, released after their grace passed (a
        run is judged dead only once silent): the misfire policy decides them too."""
        released = self.store.unsent_scheduled(now - dt.timedelta(seconds=1))
        by_task: dict[str, list[tuple[dt.datetime, bool]]] = defaultdict(list)
        for execution in released:
            task = self.catalog.regular_tasks.get(execution.task)
            if task is None or task.name in paused or execution.due_time is None:
                continue
            if now.timestamp() > execution.due_time.timestamp() + task.misfire.grace:
                by_task[task.name].append((execution.due_time, True))
        claims: list[Claim] = []
        for name, items in by_task.items():
            claims += self._apply_policy(self.catalog.tasks[name], sorted(items), cursor)
        self.store.decide(claims)

    def _apply_policy(self, task: TaskSpec, items: list[tuple[dt.datetime, bool]], cursor: SchedulerCursor) -> list[Claim]:
        """Decide each missed due time of one task (`items`: due time, missed?, in order).

        Consecutive misses form one *episode* (one outage), possibly spread over several ticks;
        `latest` catches up once per episode, `all` at most `max_catchup` times per episode,
        newest first. A due time that fired ends the episode.
        """
        policy = task.misfire
        budget = {"skip": 0, "latest": 1}.get(policy.policy, policy.max_catchup)
        claims: list[Claim] = []
        segment: list[dt.datetime] = []

        def close(segment: list[dt.datetime]) -> None:
            issued = cursor.episodes.get(task.name, 0)
            chosen = segment[len(segment) - max(0, min(budget - issued, len(segment))) :] if segment else []
            for when in segment:
                caught = when in chosen
                claims.append(self._decision(task, when, status.CATCHUP if caught else status.MISSED, cursor, caught))
            cursor.episodes[task.name] = issued + len(chosen)

        for when, missed in items:
            if missed:
                segment.append(when)
                continue
            if segment:
                close(segment)
                segment = []
            cursor.episodes.pop(task.name, None)
        if segment:
            close(segment)
        return claims

    def _decision(self, task: TaskSpec, when: dt.datetime, state: str, cursor: SchedulerCursor, caught: bool) -> Claim:
        down = cursor.down_during(when)
        if down is not None:
            why = f"the scheduler was not running from {down[0].isoformat(timespec='seconds')} to {down[1].isoformat(timespec='seconds')}"
        else:
            why = "no run sent it within its grace period (its run was lost, queued or stopped)"
        policy = task.misfire
        if caught:
            why += f"; caught up by the misfire policy `{policy.policy}`"
        else:
            why += f" (grace {policy.grace:g} s); misfire policy `{policy.policy}`" + (
                f" caught up {policy.max_catchup if policy.policy == 'all' else 1} other due time(s) of this outage" if policy.policy != "skip" else ""
            )
        return Claim(
            idempotency_key=Trigger.scheduled(when).idempotency_key(task.name),
            task=task.name,
            agent=task.agent or "",
            run_id="",
            trigger="schedule",
            due_time=when,
            prompt_version=self.catalog.prompt_versions[task.name],
            status=state,
            reason=why,
        )

    # -- 4. runs that ended holding executions ----------------------------------------------------

    def _settle_ended_runs(self, instance: dg.DagsterInstance, now: dt.datetime) -> None:
        self.report.settled_runs += settle_ended_runs(self.store, instance, now)

    # -- 5. catch-ups -----------------------------------------------------------------------------

    def _catchup_run(self, instance: dg.DagsterInstance, now: dt.datetime) -> list[dg.RunRequest]:
        """One run (at most one at a time) carries everything waiting for a carrier."""
        waiting = [e for e in self.store.waiting_for_carrier(now, now + dt.timedelta(seconds=60), limit=1000) if worth_carrying(self.catalog, e, now)]
        if not waiting:
            return []
        if self._catchup_run_alive(instance, now):
            return []
        names = sorted({e.task for e in waiting})
        return [
            dg.RunRequest(
                run_key=f"catchup:{format_due(now)}",
                job_name=CATCHUP_JOB,
                tags={
                    tags.TRIGGER: "catchup",
                    tags.CATCHUP: "true",
                    tags.PRIORITY: CATCHUP_PRIORITY,
                    tags.MAX_RUNTIME: str(max_runtime_seconds(self.catalog, names, 60.0)),
                    **self._carried_tags(names),
                },
            )
        ]

    def _catchup_run_alive(self, instance: dg.DagsterInstance, now: dt.datetime) -> bool:
        """A catch-up run is on its way or running. One that died (STARTED, or STARTING with its
        launch lost) is failed here, or it would hold back every catch-up until Dagster's run
        monitoring gave up on it."""
        records = instance.get_run_records(dg.RunsFilter(job_name=CATCHUP_JOB, statuses=list(UNFINISHED)), limit=10)
        dead = dead_started_runs(self.store, records, now) | stalled_starts(records, now, CATCHUP_START_TIMEOUT)
        if dead:
            log.warning("catch-up run(s) dead, failing them: %s", dead)
            fail_dead_runs(instance, self.store, records, dead)
        return len(records) > len(dead)

    # -- 6. run now, lost publications ------------------------------------------------------------

    def _run_now(self, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
        requests: list[dg.RunRequest] = []
        launched: list[int] = []
        ops = op_of(self.catalog)
        for pending in self.store.pending_run_requests():
            task = self.catalog.regular_tasks.get(pending.task)
            if task is None or instance.get_runs(dg.RunsFilter(tags={tags.RUN_NOW_ID: str(pending.id)}), limit=1):
                launched.append(pending.id)
                continue
            config: dict[str, Any] = {}
            if pending.variables.get("variables"):
                config["variables"] = pending.variables["variables"]
            if pending.variables.get("event"):
                config["event"] = pending.variables["event"]
            requests.append(
                dg.RunRequest(
                    run_key=f"run-now:{pending.id}",
                    job_name=MANUAL_JOB,
                    asset_selection=[dg.AssetKey(task.name)],
                    run_config={"ops": {ops[task.name]: {"config": {task.name: config}}}} if config else {},
                    tags={
                        tags.TRIGGER: "manual",
                        tags.RUN_NOW_ID: str(pending.id),
                        tags.PRIORITY: LIVE_PRIORITY,
                        tags.MAX_RUNTIME: str(max_runtime_seconds(self.catalog, [task.name], 0)),
                        **self._carried_tags([task.name]),
                    },
                )
            )
        self.store.mark_run_requests_launched(launched)
        return requests

    def _prune_beats(self, cursor: SchedulerCursor, now: dt.datetime) -> None:
        """Every few minutes, forget run heartbeats old enough to say nothing any more."""
        period = BEAT_PRUNE_EVERY.total_seconds()
        if cursor.last_tick is None or now.timestamp() // period != cursor.last_tick.timestamp() // period:
            self.store.prune_beats(now - BEATS_KEPT)

    def _republish(self, instance: dg.DagsterInstance, now: dt.datetime) -> int:
        """Results in the store that never reached Dagster (their run died in between) are
        reported now, as events of no run (their metadata names the run that carried them)."""
        lost = [e for e in self.store.unpublished(now - REPUBLISH_AFTER) if e.task in self.catalog.regular_tasks]
        if not lost:
            return 0
        results = self.store.results([e.idempotency_key for e in lost])
        for execution in lost:
            for event in republication(self.catalog, execution, results.get(execution.idempotency_key)):
                instance.report_runless_asset_event(event)
        self.store.mark_published([e.idempotency_key for e in lost], now)
        return len(lost)
