"""Retention: archive or delete old execution records, a bounded batch at a time.

Each batch is its own short transaction (`StateStore.retire_batch`), oldest records first, with a
pause between batches so the scheduler's claims and settlements (which touch the same tables)
get the locks in between; a run stops at its time budget and the next one carries on. Only
terminal executions older than the cutoff are touched: anything still claimed, sending or
waiting for a retry stays, however old.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent_pipelines.catalog.retention import RetentionSpec
from agent_pipelines.store.records import ExecutionSearch


@dataclass(frozen=True)
class RetentionReport:
    cutoff: dt.datetime
    archive: bool
    moved: int  # archived or deleted
    batches: int
    seconds: float
    finished: bool  # nothing older than the cutoff is left; False: the budget ran out first

    def describe(self) -> str:
        verb = "archived" if self.archive else "deleted"
        rest = "" if self.finished else "; more remain, the next run continues"
        return (
            f"{verb} {self.moved} execution(s) created before {self.cutoff.isoformat(timespec='seconds')} "
            f"in {self.batches} batch(es), {self.seconds:.2f} s{rest}"
        )


def cutoff_for(policy: RetentionSpec, now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(days=policy.keep_days)


def apply_retention(
    store: ExecutionSearch,
    policy: RetentionSpec,
    now: dt.datetime,
    *,
    budget_s: float | None = None,
    max_batches: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RetentionReport:
    """Batches until nothing is left, the time budget (default: the policy's `tick_budget`) is
    spent or `max_batches` ran."""
    cutoff = cutoff_for(policy, now)
    budget = policy.tick_budget if budget_s is None else budget_s
    started = monotonic()
    moved = batches = 0
    finished = False
    while True:
        count = store.retire_batch(cutoff, policy.batch_size, policy.archive)
        batches += 1
        moved += count
        if count < policy.batch_size:
            finished = True
            break
        if monotonic() - started >= budget or (max_batches is not None and batches >= max_batches):
            break
        if policy.pause:
            sleep(policy.pause)
    return RetentionReport(cutoff, policy.archive, moved, batches, monotonic() - started, finished)


def retention_preview(store: ExecutionSearch, policy: RetentionSpec, now: dt.datetime, limit: int = 1_000_000) -> int:
    """How many executions the policy would move now (counted up to `limit`): `--dry-run`."""
    return store.expired_executions(cutoff_for(policy, now), limit)
