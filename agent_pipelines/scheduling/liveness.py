"""Whether a run that Dagster still calls unfinished is alive, read from its heartbeats.

Dagster's default run launcher cannot tell: a run whose process died (killed with its machine,
or crashed while the database was down, so it never recorded its end) stays STARTED until run
monitoring's max runtime, and one killed while STARTING waits out the start timeout. The
scheduler asks here before it trusts a run to carry a window, before it waits on a catch-up run
and before it settles what a run held; a run found dead is failed with the reason, so the UI
stops showing it as running.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from agent_pipelines.process_identity import is_gone as worker_gone
from agent_pipelines.scheduling.heartbeat import SILENT_AFTER_S
from agent_pipelines.store import StateStore


def why_dead(record: dg.RunRecord, beat: dt.datetime | None, worker: str | None, now: dt.datetime) -> str | None:
    """Why the STARTED run of `record` is dead (its process is gone, or it fell silent), or None."""
    if worker_gone(worker):
        return f"its run's process ({worker}) is gone: killed"
    silent_since = now - dt.timedelta(seconds=SILENT_AFTER_S)
    started = record.start_time
    if (beat is not None and beat < silent_since) or (beat is None and started is not None and started < silent_since.timestamp()):
        return f"its run fell silent (no heartbeat for {SILENT_AFTER_S:g} s: killed, or its machine lost)"
    return None


def dead_started_runs(store: StateStore, records: list[dg.RunRecord], now: dt.datetime) -> dict[str, str]:
    """Run id -> why dead, for the STARTED runs among `records` that are no longer alive."""
    started = [r for r in records if r.dagster_run.status == dg.DagsterRunStatus.STARTED]
    if not started:
        return {}
    ids = [r.dagster_run.run_id for r in started]
    beats, workers = store.last_beats(ids), store.beat_workers(ids)
    verdicts = {r.dagster_run.run_id: why_dead(r, beats.get(r.dagster_run.run_id), workers.get(r.dagster_run.run_id), now) for r in started}
    return {run_id: why for run_id, why in verdicts.items() if why is not None}


def stalled_starts(records: list[dg.RunRecord], now: dt.datetime, after: dt.timedelta) -> dict[str, str]:
    """Run id -> why, for runs STARTING longer than `after` (their launch was lost with the
    daemon or code server that made it; a worker that still comes up finds its run failed and
    exits without executing)."""
    stalled: dict[str, str] = {}
    for record in records:
        if record.dagster_run.status == dg.DagsterRunStatus.STARTING and now - record.update_timestamp > after:
            stalled[record.dagster_run.run_id] = f"it did not start within {after.total_seconds():g} s (its launch was lost)"
    return stalled


def fail_dead_runs(instance: dg.DagsterInstance, store: StateStore, records: list[dg.RunRecord], dead: dict[str, str]) -> None:
    """Report each dead run failed, with why, and forget its heartbeat."""
    for record in records:
        why = dead.get(record.dagster_run.run_id)
        if why is not None:
            instance.report_run_failed(record.dagster_run, f"agent_pipelines: {why}")
    store.forget_beats(list(dead))
