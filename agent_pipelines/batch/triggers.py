"""When batch tasks run: their schedules' due times, their events and their upstreams' new outputs.

Each trigger is claimed once in the state store (the claim's key is the execution's idempotency
key, the same as a regular task's: `agent-pipelines:<task>:schedule:<due>`), and carried by one
run over all the task's shards (a single-run backfill: the run's partition range is every shard)
whose run key is that same key, so a repeated or resumed tick never starts a second run. A claim
no run has taken yet is requested again on every tick until its deadline: a tick that claimed
and then failed before its run request reached Dagster loses nothing.

Due times nobody claimed by `due + grace` (the daemon was down) go through the task's misfire
policy, like a regular task's: `skip` records them `missed` with the reason, `latest` catches up
the newest of the outage, `all` up to `max_catchup` of them, newest first.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.subscriptions import subscribers
from agent_pipelines.scheduling.timing import due_times, format_due, parse_due
from agent_pipelines.scheduling.triggers import Trigger, shortened
from agent_pipelines.store import Claim, StateStore, status

SENSOR_NAME = "batch_trigger_sensor"
#: How far back a task's due times are looked at when the sensor has no position for it.
FIRST_LOOK_BACK = dt.timedelta(days=1)
#: An event's or an upstream output's execution may wait this long for its run to start.
UNSCHEDULED_DEADLINE = dt.timedelta(hours=1)
#: A claimed execution whose run exists but has not started yet (queued) is left alone.
LIVE_RUN = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def batch_job_name(task: str) -> str:
    return f"{task}_batch_job"


@dataclass
class BatchCursor:
    #: task -> the due time up to which (exclusive) its schedule was handled
    planned_until: dict[str, dt.datetime] = field(default_factory=dict)
    event_seq: int | None = None
    #: "<task> <- <upstream asset>" -> the newest materialization (storage id) already handled
    upstream: dict[str, int] = field(default_factory=dict)
    last_tick: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: str | None) -> BatchCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            planned_until={name: parse_due(text) for name, text in data.get("planned_until", {}).items()},
            event_seq=data.get("event_seq"),
            upstream={key: int(value) for key, value in data.get("upstream", {}).items()},
            last_tick=parse_due(data["last_tick"]) if data.get("last_tick") else None,
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "planned_until": {name: format_due(when) for name, when in sorted(self.planned_until.items())},
                "event_seq": self.event_seq,
                "upstream": dict(sorted(self.upstream.items())),
                "last_tick": format_due(self.last_tick) if self.last_tick else None,
            }
        )


@dataclass
class BatchTickReport:
    claimed: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    expired: list[tuple[str, str]] = field(default_factory=list)


def upstream_assets(task: TaskSpec) -> list[str]:
    """The assets whose new outputs start a batch task with `on_upstream: true`."""
    from assets.batch import combined_key

    names = list(task.depends_on)
    if task.items is not None and task.items.from_task:
        names.append(combined_key(task.items.from_task))
    from_output = getattr(task.items, "from_output", None) if task.items is not None else None
    if from_output:
        names.append(from_output)
    return list(dict.fromkeys(names))


class BatchTriggers:
    """One tick's work, apart from the sensor so tests can drive it with their own clock."""

    def __init__(self, catalog: Catalog, store: StateStore) -> None:
        self.catalog = catalog
        self.store = store
        self.tasks = {name: t for name, t in catalog.batch_tasks.items() if t.enabled}
        self.report = BatchTickReport()

    def tick(self, cursor: BatchCursor, now: dt.datetime, instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], BatchCursor]:
        paused = self.store.paused_tasks()
        live = {name: t for name, t in self.tasks.items() if name not in paused}
        first_seen = self.store.register_tasks(sorted(self.tasks), now) if self.tasks else {}
        self._schedule(live, cursor, now, first_seen)
        self._events(live, cursor, now)
        self._upstream(live, cursor, now, instance)
        requests = self._requests(instance, now)
        cursor.last_tick = now
        return requests, cursor

    # -- schedules ----------------------------------------------------------------------------

    def _schedule(self, tasks: dict[str, TaskSpec], cursor: BatchCursor, now: dt.datetime, first_seen: dict[str, dt.datetime]) -> None:
        claims: list[Claim] = []
        end = now + dt.timedelta(microseconds=1)  # a due time at `now` is due
        for name, task in tasks.items():
            if task.schedule is None:
                continue
            start = cursor.planned_until.get(name) or max(first_seen.get(name, now), now - FIRST_LOOK_BACK)
            grace = dt.timedelta(seconds=task.misfire.grace)
            missed: list[dt.datetime] = []
            for due in due_times(task.schedule, start, end):
                if now <= due + grace:
                    claims.append(self._claim(task, Trigger.scheduled(due), deadline=due + grace))
                else:
                    missed.append(due)
            claims += self._misfire(task, missed, cursor, now)
            cursor.planned_until[name] = end
        self._record(claims)

    def _misfire(self, task: TaskSpec, missed: Sequence[dt.datetime], cursor: BatchCursor, now: dt.datetime) -> list[Claim]:
        if not missed:
            return []
        policy = task.misfire
        budget = {"skip": 0, "latest": 1}.get(policy.policy, policy.max_catchup)
        chosen = set(missed[len(missed) - min(budget, len(missed)) :]) if budget else set()
        since = f" since {cursor.last_tick.isoformat(timespec='seconds')}" if cursor.last_tick else ""
        why = f"not started within its grace of {policy.grace:g} s: batch_trigger_sensor did not run{since} (the daemon was down)"
        claims = []
        for due in missed:
            trigger = Trigger.scheduled(due)
            if due in chosen:
                claims.append(
                    self._claim(task, trigger, deadline=now + dt.timedelta(seconds=policy.grace), reason=f"{why}; caught up by the misfire policy `{policy.policy}`")
                )
            else:
                claims.append(self._claim(task, trigger, state=status.MISSED, reason=f"{why}; misfire policy `{policy.policy}`"))
        return claims

    # -- events ---------------------------------------------------------------------------------

    def _events(self, tasks: dict[str, TaskSpec], cursor: BatchCursor, now: dt.datetime) -> None:
        listeners = [t for t in tasks.values() if t.events]
        if cursor.event_seq is None:
            # Events received before the sensor first ran are not this platform's to deliver.
            cursor.event_seq = self.store.newest_event_seq()
            return
        if not listeners:
            cursor.event_seq = max(cursor.event_seq, self.store.newest_event_seq())
            return
        claims = []
        for event in self.store.events_after(cursor.event_seq, limit=500):
            cursor.event_seq = event.seq
            for task in subscribers(listeners, event):
                claims.append(self._claim(task, Trigger.for_event(event.event_id), deadline=now + UNSCHEDULED_DEADLINE))
        self._record(claims)

    # -- upstream outputs -----------------------------------------------------------------------

    def _upstream(self, tasks: dict[str, TaskSpec], cursor: BatchCursor, now: dt.datetime, instance: dg.DagsterInstance) -> None:
        claims = []
        for task in tasks.values():
            if not task.on_upstream:
                continue
            for asset in upstream_assets(task):
                position = f"{task.name} <- {asset}"
                records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
                newest = records[0].storage_id if records else 0
                seen = cursor.upstream.get(position)
                cursor.upstream[position] = max(newest, seen or 0)
                if seen is None or newest <= seen:
                    continue  # the first look only takes the position: old outputs start nothing
                trigger = Trigger("upstream", shortened(f"{asset}@{newest}"))
                claims.append(self._claim(task, trigger, deadline=now + UNSCHEDULED_DEADLINE))
        self._record(claims)

    # -- claims and runs ------------------------------------------------------------------------

    def _claim(
        self,
        task: TaskSpec,
        trigger: Trigger,
        *,
        deadline: dt.datetime | None = None,
        state: str = status.CLAIMED,
        reason: str | None = None,
    ) -> Claim:
        return Claim(
            idempotency_key=trigger.idempotency_key(task.name),
            task=task.name,
            agent=task.agent or task.fleet or "",
            run_id="",
            trigger=trigger.kind,
            due_time=trigger.due_time,
            prompt_version=self.catalog.prompt_versions[task.name],
            status=state,
            reason=reason,
            deadline=deadline,
        )

    def _record(self, claims: list[Claim]) -> None:
        won = self.store.decide(claims)
        for claim in claims:
            if claim.idempotency_key in won:
                (self.report.missed if claim.status == status.MISSED else self.report.claimed).append(claim.idempotency_key)

    def _requests(self, instance: dg.DagsterInstance, now: dt.datetime) -> list[dg.RunRequest]:
        """A run for every claim no run has taken yet (again each tick: the run key dedupes)."""
        requests = []
        for execution in self.store.unstarted_claims(sorted(self.catalog.batch_tasks)):
            task = self.tasks.get(execution.task)
            key = execution.idempotency_key
            if task is None:
                self._expire(key, "the task was disabled or removed before its run started")
                continue
            if execution.deadline is not None and now > execution.deadline:
                runs = instance.get_runs(dg.RunsFilter(tags={tags.EXECUTION: key}), limit=1)
                if runs and runs[0].status in LIVE_RUN:
                    continue  # queued behind other runs: its run takes it when it starts
                ended = f"its run {runs[0].run_id} ended ({runs[0].status.value.lower()}) before starting it" if runs else "no run started it before its deadline"
                self._expire(key, ended)
                continue
            request = self._run_request(task, execution, instance)
            if request is not None:
                requests.append(request)
        return requests

    def _expire(self, key: str, why: str) -> None:
        if self.store.close_unstarted(key, status.MISSED, why):
            self.report.expired.append((key, why))

    def _run_request(self, task: TaskSpec, execution: Any, instance: dg.DagsterInstance) -> dg.RunRequest | None:
        from assets.batch import partitions_for, static_shard_keys

        keys = static_shard_keys(self.catalog, task)
        if keys is None:
            keys = list(partitions_for(self.catalog, task).get_partition_keys(dynamic_partitions_store=instance))
        if not keys:
            return None  # no shard yet (shards from the data): `batch_shards_sensor` adds them
        run_tags = {
            tags.EXECUTION: execution.idempotency_key,
            tags.TASK: task.name,
            tags.TASKS: task.name,
            tags.AGENT: task.agent or task.fleet or "",
            tags.OWNER: tags.owner_label(task.owner),
            tags.TRIGGER: execution.trigger,
            ASSET_PARTITION_RANGE_START_TAG: keys[0],
            ASSET_PARTITION_RANGE_END_TAG: keys[-1],
        }
        if execution.due_time is not None:
            run_tags[tags.DUE_TIME] = format_due(execution.due_time)
        if execution.trigger == "event":
            run_tags[tags.EVENT_ID] = Trigger.from_key(execution.idempotency_key)[1].ref[:255]
        return dg.RunRequest(run_key=execution.idempotency_key, job_name=batch_job_name(task.name), tags=run_tags)

