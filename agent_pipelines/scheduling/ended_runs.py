"""Runs that ended (failed, stopped, killed, fell silent) while holding executions.

Both the task scheduler and the batch trigger sensor settle what such a run held: unsent claims
become `not_sent`, requests in flight `unknown`, pending retries wait for another carrier. Every
update is conditional (see `store.executions`), so two sensors settling the same run is harmless.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from agent_pipelines.scheduling.liveness import dead_started_runs, fail_dead_runs
from agent_pipelines.store import StateStore


def settle_ended_runs(
    store: StateStore, instance: dg.DagsterInstance, now: dt.datetime, tasks: Sequence[str] | None = None
) -> list[tuple[str, str, int]]:
    """Settle the executions of dead runs (of `tasks` only, when given); (run id, why, count) each."""
    held = store.held_by_runs(tasks)
    if not held:
        return []
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=list(held)))}
    dead = dead_started_runs(store, list(records.values()), now)
    fail_dead_runs(instance, store, list(records.values()), dead)
    settled_runs: list[tuple[str, str, int]] = []
    for run_id in held:
        record = records.get(run_id)
        why = None
        if record is None:
            why = "its run no longer exists"
        elif record.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            why = f"its run ended ({record.dagster_run.status.value.lower()})"
        elif record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            why = "its run ended before recording it"
        elif run_id in dead:
            why = dead[run_id]
        if why is None:
            continue
        settled = store.release_run(run_id, why)
        if settled:
            settled_runs.append((run_id, why, len(settled)))
    return settled_runs
