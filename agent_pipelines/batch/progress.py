"""A batch run's progress in the UI while it runs: a run tag and an observation per shard.

The shards' event loop only counts (`ShardSummary` counters, no per-item work beyond that); a
reporter thread beside it reads the counters every couple of seconds and writes them to the
instance, so database writes never stall the loop. What it writes:

- the run tag `agent_pipelines/progress`, e.g. `12,000/40,000 done, 31 failed, 12 failed checks,
  850 items/s` (the runs list and the run page show it);
- an `AssetObservation` of each shard partition whose counters moved (items, done, ok, failed,
  failed checks, items/s), so the asset's partition page shows live progress. They are reported
  outside the run (`report_runless_asset_event`: an op's own events reach the instance only when
  it yields), with the run linked in their metadata.

With many shards, observations are spaced out (at most ~`MAX_OBSERVATIONS_PER_S` a second); the
run tag still changes every `interval`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.scheduling.run_log import never_raising

if TYPE_CHECKING:
    from agent_pipelines.batch.runner import ShardSummary

#: Seconds between progress reports.
INTERVAL_S = 2.0
#: Seconds between progress lines in the run's log.
LOG_EVERY_S = 30.0
#: Observations written per second at most, whatever the number of shards: each costs ~8 ms
#: of CPU on a SQLite instance, taken from the shards' event loop (one process, one GIL).
MAX_OBSERVATIONS_PER_S = 2.0


class ProgressBoard:
    """The shards of a run as they start: written by the event loop, read by the reporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: dict[str, ShardSummary] = {}

    def add(self, summary: ShardSummary) -> None:
        with self._lock:
            self._shards[summary.key] = summary

    def shards(self) -> list[ShardSummary]:
        with self._lock:
            return list(self._shards.values())


@dataclass(frozen=True)
class ShardProgress:
    """One shard's counters at one moment (ints read once, so they agree with each other)."""

    key: str
    node: str
    total: int | None
    done: int
    ok: int
    failed: int
    check_failed: int
    items_per_second: float

    @classmethod
    def of(cls, summary: ShardSummary, now: float) -> ShardProgress:
        ok, failed, resumed = summary.ok, summary.failed, summary.resumed
        elapsed = now - summary.started if summary.started is not None else 0.0
        sent = ok + failed - resumed
        return cls(
            key=summary.key,
            node=summary.node,
            total=summary.total,
            done=ok + failed,
            ok=ok,
            failed=failed,
            check_failed=summary.check_failed,
            items_per_second=round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        )

    def metadata(self, run_id: str, final: bool) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "done": dg.MetadataValue.int(self.done),
            "ok": dg.MetadataValue.int(self.ok),
            "failed": dg.MetadataValue.int(self.failed),
            "failed_checks": dg.MetadataValue.int(self.check_failed),
            "items_per_second": dg.MetadataValue.float(self.items_per_second),
            "node": dg.MetadataValue.text(self.node),
            "state": dg.MetadataValue.text("finished" if final else "running"),
            "run": dg.MetadataValue.dagster_run(run_id),
        }
        if self.total is not None:
            metadata["items"] = dg.MetadataValue.int(self.total)
            metadata["progress"] = dg.MetadataValue.float(round(self.done / self.total, 4) if self.total else 1.0)
        return metadata


def progress_text(shards: list[ShardProgress], *, final: bool = False) -> str:
    """`12,000/40,000 done, 31 failed, 12 failed checks, 850 items/s` (the run tag)."""
    if not shards:
        return "finished: no shard ran" if final else "starting: splitting the items into shards"
    done = sum(s.done for s in shards)
    known = [s.total for s in shards if s.total is not None]
    total = f"/{sum(known):,}" if len(known) == len(shards) else ""
    parts = [f"{done:,}{total} done", f"{sum(s.failed for s in shards):,} failed"]
    checked = sum(s.check_failed for s in shards)
    if checked:
        parts.append(f"{checked:,} failed checks")
    rate = sum(s.items_per_second for s in shards)
    if not final and rate:
        parts.append(f"{rate:,.0f} items/s")
    text = ", ".join(parts)
    return f"finished: {text}" if final else text


class ProgressReporter:
    """Reports the board every `interval` seconds from a thread, and once more on exit."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        asset_key: dg.AssetKey,
        board: ProgressBoard,
        *,
        interval: float = INTERVAL_S,
        log: logging.Logger | Any = None,
        log_every: float = LOG_EVERY_S,
    ) -> None:
        self.instance = instance
        self.run_id = run_id
        self.asset_key = asset_key
        self.board = board
        self.interval = interval
        self.log = never_raising(log or logging.getLogger(__name__))  # it logs while the database is down
        self.log_every = log_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"batch-progress-{run_id[:8]}", daemon=True)
        self._observed: dict[str, tuple[int, float]] = {}  # shard -> (done, when) last observed
        self._logged_at = time.monotonic()
        self._warned = False

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.report(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self, final: bool = False) -> None:
        """Never raises: progress is worth less than the run it describes."""
        try:
            self._report(final)
        except Exception:  # a failed report must not fail (or stall) the run
            if not self._warned:
                self._warned = True
                self.log.warning("could not report the batch's progress (it goes on)", exc_info=True)

    def _report(self, final: bool) -> None:
        now = time.monotonic()
        shards = [ShardProgress.of(summary, now) for summary in self.board.shards()]
        text = progress_text(shards, final=final)
        self.instance.add_run_tags(self.run_id, {tags.PROGRESS: text})
        spacing = max(self.interval, len(shards) / MAX_OBSERVATIONS_PER_S)
        for shard in shards:
            last = self._observed.get(shard.key)
            moved = last is None or last[0] != shard.done
            if final or (moved and (last is None or now - last[1] >= spacing)):
                self.instance.report_runless_asset_event(
                    dg.AssetObservation(asset_key=self.asset_key, partition=shard.key, metadata=shard.metadata(self.run_id, final))
                )
                self._observed[shard.key] = (shard.done, now)
        if not final and now - self._logged_at >= self.log_every:
            self._logged_at = now
            self.log.info(f"progress: {text}")
