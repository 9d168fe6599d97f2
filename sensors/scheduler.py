"""`task_scheduler_sensor`: every time-triggered task, exactly once per due time.

Each tick (the sensor daemon's floor is 5 s) it
1. requests the *window runs* of the windows starting within `LEAD`, one run key per window
   and chunk, so a repeated or resumed tick never creates a run twice;
2. applies each task's misfire policy to due times that nobody claimed by `due + grace` (daemon
   down, run lost): it claims them itself, as `missed` or as `catchup` with a catch-up run,
   so a late window run and the reconciler can never both fire one due time;
3. launches the "run now" requests made from the CLI or `task_control_job`;
4. settles the runs that died (their heartbeat stopped, see `agent_pipelines.heartbeat`): marks
   them failed in Dagster, fails the requests they had in flight (outcome unknown: reported,
   never sent again) and hands unsent catch-ups to a new catch-up run.
The cursor remembers how far planning and reconciliation got; it lives in Dagster's storage.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.planning import (
    LEAD,
    WINDOW,
    DueIndex,
    downstream_in_run,
    due_index,
    max_runtime_seconds,
    timed_tasks,
    window_floor,
    window_runs,
)
from agent_pipelines.heartbeat import SILENT_AFTER_S
from agent_pipelines.store import Claim, Execution, StateStore
from agent_pipelines.timing import format_due, parse_due
from agent_pipelines.triggers import Trigger

SENSOR_NAME = "task_scheduler_sensor"
#: How long after its due time an unclaimed execution counts as stranded (its run is gone).
RESCUE_AFTER = dt.timedelta(seconds=3)
_WAITING_STATUSES = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
_UNFINISHED_STATUSES = (*_WAITING_STATUSES, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
#: Catch-up runs tried for one due time before it fails for good.
MAX_CATCHUP_RUNS = 3


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class SchedulerCursor:
    planned_until: dt.datetime | None = None
    reconciled_until: dt.datetime | None = None
    rescued_until: dt.datetime | None = None
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
            rescued_until=moment("rescued_until"),
            episodes=dict(data.get("episodes") or {}),
        )

    def dump(self) -> str:
        def text(value: dt.datetime | None) -> str | None:
            return format_due(value) if value else None

        return json.dumps(
            {
                "planned_until": text(self.planned_until),
                "reconciled_until": text(self.reconciled_until),
                "rescued_until": text(self.rescued_until),
                "episodes": self.episodes,
            }
        )


def catchup_run_key(task_name: str, due: dt.datetime, attempt: int = 0) -> str:
    """One run key per try of one catch-up: a dead try must not block the next by its key."""
    key = f"catchup:{Trigger.scheduled(due).idempotency_key(task_name)}"
    return f"{key}:{attempt}" if attempt else key


def task_run_tags(catalog: Catalog, task: TaskSpec, trigger: str) -> dict[str, str]:
    return {
        tags.TASK: task.name,
        tags.AGENT: task.agent,
        tags.OWNER: task.owner,
        tags.PROMPT_VERSION: catalog.prompt_versions[task.name],
        tags.TRIGGER: trigger,
    }


class Scheduler:
    """One tick's work, separate from the sensor so tests can drive it with their own clock."""

    def __init__(self, catalog: Catalog, store: StateStore, unit_of: Mapping[str, str], variables_config) -> None:
        self.catalog = catalog
        self.store = store
        self.unit_of = unit_of
        self.variables_config = variables_config
        self.listeners = [t.name for t in catalog.tasks.values() if t.events and t.enabled]
        graces = [t.misfire.grace for t in timed_tasks(catalog)]
        self.max_grace = dt.timedelta(seconds=max(graces, default=60.0))
        #: the runs found dead by the latest tick, with what they held
        self.buried: list[tuple[dg.DagsterRun, list[Execution]]] = []

    def tick(self, cursor: SchedulerCursor, now: dt.datetime, instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], SchedulerCursor]:
        # The cursor keeps milliseconds; so must every position derived from `now`, or the
        # cached due indexes would never match the next tick's cursor and be rebuilt each time.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        paused = self.store.paused_tasks()
        requests = self._plan(cursor, now, paused)
        requests += self._rescue(cursor, now, paused, instance)
        requests += self._reconcile(cursor, now, paused)
        self.buried = self._bury_dead_runs(instance, now)
        requests += self._catchups_waiting(instance, {r.run_key for r in requests})
        requests += self._run_now(instance)
        unique = {request.run_key: request for request in requests}
        return list(unique.values()), cursor

    # -- 1. window runs -------------------------------------------------------------------------

    def _plan(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str]) -> list[dg.RunRequest]:
        current = window_floor(now)
        start = max(cursor.planned_until or current, current)
        horizon = now + LEAD
        requests: list[dg.RunRequest] = []
        index = due_index(self.catalog, "plan", start)
        while start < horizon:
            requests += self._window_requests(start, paused, index)
            start += WINDOW
        cursor.planned_until = start
        return requests

    def _window_requests(
        self, start: dt.datetime, paused: set[str], index: DueIndex, rescue: bool = False
    ) -> list[dg.RunRequest]:
        end = start + WINDOW
        due = {task.name for task, _ in index.pop_until(end) if task.name not in paused}
        listeners = [n for n in self.listeners if n not in paused]
        requests = []
        for run in window_runs(self.catalog, self.unit_of, start, sorted(due), listeners):
            run_tags = {
                tags.WINDOW_START: format_due(start),
                tags.WINDOW_END: format_due(end),
                tags.TRIGGER: "schedule",
                tags.MAX_RUNTIME: str(
                    max_runtime_seconds(self.catalog, self.unit_of, run.tasks, (LEAD + WINDOW).total_seconds())
                ),
            }
            if rescue:
                run_tags[tags.RESCUE] = "true"
            if len(run.tasks) == 1:
                run_tags.update(task_run_tags(self.catalog, self.catalog.tasks[run.tasks[0]], "schedule"))
            requests.append(
                dg.RunRequest(
                    run_key=f"{run.run_key}:rescue" if rescue else run.run_key,
                    asset_selection=[dg.AssetKey(n) for n in run.tasks],
                    tags=run_tags,
                )
            )
        return requests

    def _rescue(
        self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str], instance: dg.DagsterInstance
    ) -> list[dg.RunRequest]:
        """A window run that died (its machine crashed, it was killed) fires nothing.

        Once a due time is `RESCUE_AFTER` old and unclaimed, while its window's run is not
        merely waiting in the queue, the run is presumed dead: request one
        replacement for that window and for every later window already planned (their runs were
        most likely lost with it). Each window is rescued at most once; claims make a false
        alarm harmless, and the misfire policy covers whatever a rescue cannot.
        """
        until = now - RESCUE_AFTER
        since = cursor.rescued_until or until
        cursor.rescued_until = max(since, until)
        if until <= since:
            return []
        # A stranded due time may itself be past its grace already (the misfire policy decides
        # it); it still tells that its window's run is gone and the rest of the window needs one.
        due = [(t, d) for t, d in due_index(self.catalog, "rescue", since).pop_until(until) if t.name not in paused]
        if not due:
            return []
        keys = {Trigger.scheduled(d).idempotency_key(t.name): d for t, d in due}
        statuses = self.store.statuses(list(keys))
        stranded = sorted({window_floor(when) for key, when in keys.items() if key not in statuses})
        stranded = [w for w in stranded if not self._window_run_is_queued(instance, w)]
        if not stranded:
            return []
        requests = []
        start = stranded[0]
        last = max(cursor.planned_until or start, stranded[-1] + WINDOW)
        while start < last:
            requests += self._window_requests(start, paused, DueIndex(timed_tasks(self.catalog), start), rescue=True)
            start += WINDOW
        return requests

    def _window_run_is_queued(self, instance: dg.DagsterInstance, start: dt.datetime) -> bool:
        runs = instance.get_runs(
            dg.RunsFilter(tags={tags.WINDOW_START: format_due(start)}, statuses=list(_WAITING_STATUSES)), limit=1
        )
        return bool(runs)

    # -- 2. misfires ----------------------------------------------------------------------------

    def _reconcile(self, cursor: SchedulerCursor, now: dt.datetime, paused: set[str]) -> list[dg.RunRequest]:
        until = now - self.max_grace
        since = cursor.reconciled_until or until  # nothing to catch up from before we existed
        if until <= since:
            cursor.reconciled_until = since
            return []
        due = [(t, d) for t, d in due_index(self.catalog, "reconcile", since).pop_until(until) if t.name not in paused]
        cursor.reconciled_until = until
        if not due:
            return []
        keys = {Trigger.scheduled(d).idempotency_key(t.name): (t, d) for t, d in due}
        statuses = self.store.statuses(list(keys))
        by_task: dict[str, list[tuple[dt.datetime, bool]]] = defaultdict(list)
        for key, (task, when) in keys.items():
            by_task[task.name].append((when, statuses.get(key) in (None, "claimed")))
        claims: list[Claim] = []
        for name, items in by_task.items():
            claims += self._apply_policy(self.catalog.tasks[name], sorted(items), cursor.episodes)
        won = self.store.claim(claims)
        stale = [c for c in claims if c.idempotency_key not in won and statuses.get(c.idempotency_key) == "claimed"]
        for status in ("missed", "catchup"):
            won |= self.store.reassign_stale_claims([c.idempotency_key for c in stale if c.status == status], status)
        return [self._catchup_request(c.task, c.due_time) for c in claims if c.status == "catchup" and c.idempotency_key in won and c.due_time]

    def _apply_policy(
        self, task: TaskSpec, items: list[tuple[dt.datetime, bool]], episodes: dict[str, int]
    ) -> list[Claim]:
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
            issued = episodes.get(task.name, 0)
            chosen = segment[len(segment) - max(0, min(budget - issued, len(segment))) :] if segment else []
            for when in segment:
                claims.append(self._claim(task, when, "catchup" if when in chosen else "missed"))
            episodes[task.name] = issued + len(chosen)

        for when, missed in items:
            if missed:
                segment.append(when)
                continue
            if segment:
                close(segment)
                segment = []
            episodes.pop(task.name, None)
        if segment:
            close(segment)
        return claims

    def _claim(self, task: TaskSpec, when: dt.datetime, status: str) -> Claim:
        return Claim(
            idempotency_key=Trigger.scheduled(when).idempotency_key(task.name),
            task=task.name,
            agent=task.agent,
            run_id="",
            trigger="schedule",
            due_time=when,
            prompt_version=self.catalog.prompt_versions[task.name],
            status=status,
        )

    def _catchup_request(self, task_name: str, due: dt.datetime, attempt: int = 0) -> dg.RunRequest:
        task = self.catalog.tasks[task_name]
        selection = downstream_in_run(self.catalog, [task_name])
        return dg.RunRequest(
            run_key=catchup_run_key(task_name, due, attempt),
            asset_selection=[dg.AssetKey(n) for n in selection],
            tags={
                **task_run_tags(self.catalog, task, "schedule"),
                tags.DUE_TIME: format_due(due),
                tags.CATCHUP: "true",
                tags.MAX_RUNTIME: str(max_runtime_seconds(self.catalog, self.unit_of, selection, 0)),
            },
        )

    def _catchups_waiting(self, instance: dg.DagsterInstance, requested: set[str]) -> list[dg.RunRequest]:
        """Catch-ups reserved but not taken: request (again) the run that takes each one.

        Reasons: a tick that crashed between reserving and requesting, or a catch-up run that
        failed or died before sending (each try is a new run key; after `MAX_CATCHUP_RUNS`
        the catch-up fails for good instead of looping).
        """
        waiting = [
            e for e in self.store.executions_with_status("catchup")
            if e.task in self.catalog.tasks and e.due_time is not None
        ]
        if not waiting:
            return []
        in_flight = {
            (r.tags.get(tags.TASK), r.tags.get(tags.DUE_TIME))
            for r in instance.get_runs(dg.RunsFilter(tags={tags.CATCHUP: "true"}, statuses=list(_UNFINISHED_STATUSES)))
        }
        requests = []
        for execution in waiting:
            assert execution.due_time is not None
            due = format_due(execution.due_time)
            if (execution.task, due) in in_flight or catchup_run_key(execution.task, execution.due_time) in requested:
                continue
            earlier = instance.get_runs(
                dg.RunsFilter(tags={tags.TASK: execution.task, tags.DUE_TIME: due, tags.CATCHUP: "true"})
            )
            if len(earlier) >= MAX_CATCHUP_RUNS:
                self.store.give_up_catchup(
                    execution.idempotency_key, f"{len(earlier)} catch-up runs ended without sending it"
                )
                continue
            requests.append(self._catchup_request(execution.task, execution.due_time, attempt=len(earlier)))
        return requests

    # -- 3. run now -----------------------------------------------------------------------------

    def _run_now(self, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
        requests: list[dg.RunRequest] = []
        launched: list[int] = []
        for pending in self.store.pending_run_requests():
            task = self.catalog.tasks.get(pending.task)
            if task is None:
                launched.append(pending.id)  # the task left the catalog: nothing to run
                continue
            existing = instance.get_runs(dg.RunsFilter(tags={tags.RUN_NOW_ID: str(pending.id)}), limit=1)
            if existing:
                launched.append(pending.id)
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"run-now:{pending.id}",
                    asset_selection=[dg.AssetKey(task.name)],
                    run_config=self.variables_config(task.name, pending.variables) if pending.variables else {},
                    tags={
                        **task_run_tags(self.catalog, task, "manual"),
                        tags.RUN_NOW_ID: str(pending.id),
                        tags.MAX_RUNTIME: str(max_runtime_seconds(self.catalog, self.unit_of, [task.name], 0)),
                    },
                )
            )
        self.store.mark_run_requests_launched(launched)
        return requests

    # -- 4. dead runs ---------------------------------------------------------------------------

    def _bury_dead_runs(
        self, instance: dg.DagsterInstance, now: dt.datetime
    ) -> list[tuple[dg.DagsterRun, list[Execution]]]:
        """Runs whose heartbeat stopped `SILENT_AFTER_S` ago are dead: settle what they held.

        A run that never beat is judged only if it is one of ours (it carries a trigger tag)
        and started that long ago; any other run is judged once it has beaten.
        """
        records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=1000)
        if not records:
            return []
        silent_since = now - dt.timedelta(seconds=SILENT_AFTER_S)
        beats = self.store.last_beats([r.dagster_run.run_id for r in records])
        buried = []
        for record in records:
            run = record.dagster_run
            beat = beats.get(run.run_id)
            if beat is not None:
                dead = beat < silent_since
            else:
                started = record.start_time
                dead = tags.TRIGGER in run.tags and started is not None and started < silent_since.timestamp()
            if not dead:
                continue
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status != dg.DagsterRunStatus.STARTED:
                continue  # it finished meanwhile
            held = self.store.release_dead_run(run.run_id, catchup=run.tags.get(tags.CATCHUP) == "true")
            instance.report_run_failed(
                current,
                f"agent_pipelines: no heartbeat for {SILENT_AFTER_S:g} s, the run's process is gone "
                f"(killed, or its machine lost); {len(held)} execution(s) settled",
            )
            self.store.forget_beats([run.run_id])
            buried.append((current, held))
        return buried


def build_scheduler_sensor(
    catalog: Catalog,
    job: object,
    unit_of: Mapping[str, str],
    variables_config,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Creates each window's runs ahead of time (their dispatcher fires every due time "
            "to the second), applies misfire policies, and launches run-now requests."
        ),
    )
    def task_scheduler_sensor(context) -> dg.SensorResult:  # noqa: ANN001 - Dagster inspects the name
        store = StateStore.for_instance(context.instance)
        scheduler = Scheduler(catalog, store, unit_of, variables_config)
        cursor = SchedulerCursor.parse(context.cursor)
        requests, cursor = scheduler.tick(cursor, utcnow(), context.instance)
        for run, held in scheduler.buried:
            context.log.warning(
                f"run {run.run_id} is dead (no heartbeat); marked failed. "
                + "; ".join(f"{e.idempotency_key}: {e.status}" for e in held)
            )
        return dg.SensorResult(run_requests=requests, cursor=cursor.dump())

    return task_scheduler_sensor
