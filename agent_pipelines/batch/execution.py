"""The execution a batch run carries: one due time, event, upstream output or manual launch.

A batch execution is a row in the same execution records as a regular task's (so `executions
list`, notifications and the audit of who ran what see it), with the same idempotency key. The
run takes it before sending anything (`sending`, with heartbeats so a killed run is settled
`unknown` by the sensors) and settles it with the items' totals when the shards are done. A
re-execution of the run carries the same execution again: the items it already did are resumed,
not re-sent (see `batch.resume`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import Claim, ResultRecord, Settlement, StateStore, status

UTC = dt.timezone.utc


@dataclass
class BatchExecution:
    key: str
    task: str
    trigger: Trigger
    run_id: str
    started: dt.datetime
    #: template variables of the trigger: `event`, `upstream`
    context: dict[str, Any] = field(default_factory=dict)


def open_execution(store: StateStore, catalog: Catalog, task: TaskSpec, run: dg.DagsterRun) -> BatchExecution:
    """Take this run's execution (claim it first for a launch by hand); fail if another run has it."""
    now = dt.datetime.now(UTC)
    key = run.tags.get(tags.EXECUTION)
    if key is None:
        trigger = Trigger.manual(run.tags.get(tags.ROOT_RUN_ID, run.run_id))
        key = trigger.idempotency_key(task.name)
        store.claim(
            [
                Claim(
                    idempotency_key=key,
                    task=task.name,
                    agent=task.agent or task.fleet or "",
                    run_id=run.run_id,
                    trigger="manual",
                    due_time=None,
                    prompt_version=catalog.prompt_versions[task.name],
                )
            ]
        )
    else:
        _name, trigger = Trigger.from_key(key)
    if store.carry_batch(key, run.run_id, now) is None:
        holder = store.get_execution(key)
        raise dg.Failure(
            f"execution {key} is being carried by run {holder.run_id if holder else '?'}: "
            "wait for it to end (or terminate it) before re-executing",
            allow_retries=False,
        )
    execution = BatchExecution(key=key, task=task.name, trigger=trigger, run_id=run.run_id, started=now)
    execution.context = _trigger_context(store, task, trigger, run)
    return execution


def _trigger_context(store: StateStore, task: TaskSpec, trigger: Trigger, run: dg.DagsterRun) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if task.events:
        event_id = run.tags.get(tags.EVENT_ID) or (trigger.ref if trigger.kind == "event" else None)
        event = store.get_event(event_id) if event_id else None
        context["event"] = event.as_template_value() if event else None
    if task.depends_on:
        outputs: dict[str, str | None] = {}
        for dep in task.depends_on:
            latest = store.latest_success(dep)
            result = store.results([latest.idempotency_key]).get(latest.idempotency_key) if latest else None
            outputs[dep] = result.output if result else None
        context["upstream"] = outputs
    return context


def close_execution(
    store: StateStore,
    execution: BatchExecution,
    *,
    items: int,
    ok: int,
    failed: int,
    shards: Sequence[dict[str, Any]],
    error: str | None,
    tokens_in: int = 0,
    tokens_out: int = 0,
) -> None:
    """Settle the execution with the run's totals (failed when a shard failed or could not run)."""
    now = dt.datetime.now(UTC)
    summary = f"{items:,} item(s): {ok:,} ok, {failed:,} failed over {len(shards)} shard(s)"
    store.settle(
        [
            Settlement(
                key=execution.key,
                task=execution.task,
                status=status.FAILED if error else status.SUCCEEDED,
                run_id=execution.run_id,
                outcome="failed" if error else "succeeded",
                failure_kind="batch" if error else None,
                error=error,
                latency_ms=(now - execution.started).total_seconds() * 1000,
                answered_at=now,
                result=ResultRecord(
                    prompt=None,
                    output=summary,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    details={"items": items, "ok": ok, "failed": failed, "shards": list(shards)},
                ),
            )
        ]
    )
    # The run materializes the shards itself: nothing for the scheduler to report later.
    store.mark_published([execution.key], now)
