"""When tasks are due: cron (5 fields, or 6 with seconds first; optionally shifted by a fixed
offset), fixed intervals, one-shot times.

Everything returns aware UTC datetimes, ascending. Cron is evaluated by croniter on the local
wall clock of the schedule's time zone, then placed on the UTC timeline with Dagster's rules for
daylight-saving changes: a time the spring change skips fires once, at the first valid instant
after the gap; a time the autumn change repeats fires once, at its second occurrence, unless the
hour field is `*` (a task due every hour keeps firing every real hour).
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterator

from croniter import croniter

from agent_pipelines.catalog.model import (
    CronScheduleSpec,
    IntervalScheduleSpec,
    OneShotScheduleSpec,
    TaskSpec,
)

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
Schedule = CronScheduleSpec | IntervalScheduleSpec | OneShotScheduleSpec
#: How far before `start` the local-time walk begins, so no DST shift hides a due time.
_DST_MARGIN = dt.timedelta(hours=3)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC)


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _placements(local: dt.datetime, zone: zoneinfo.ZoneInfo) -> tuple[dt.datetime, dt.datetime] | dt.datetime:
    """Where a wall-clock time falls in UTC: one instant, or (first, second) when repeated."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return first
    if first.astimezone(zone).replace(tzinfo=None) != local:
        return _gap_end(second, first, zone)  # skipped by the spring change
    return first, second


def _gap_end(low: dt.datetime, high: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The transition instant between `low` (old offset) and `high` (new offset), to the second."""
    offset = low.astimezone(zone).utcoffset()
    while (high - low) > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def _cron_due_times(spec: CronScheduleSpec, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    zone = _zone(spec.timezone)
    fields = spec.cron.split()
    hour_field = fields[2] if spec.has_seconds else fields[1]
    every_hour = hour_field == "*"
    walk_from = (start - _DST_MARGIN).astimezone(zone).replace(tzinfo=None) - dt.timedelta(seconds=1)
    local_times = croniter(spec.cron, walk_from, ret_type=dt.datetime, second_at_beginning=spec.has_seconds)
    last: dt.datetime | None = None
    firsts: list[dt.datetime] = []  # first occurrences of a repeated hour, waiting for the seconds
    seconds: list[dt.datetime] = []

    def flush() -> list[dt.datetime]:
        out = (firsts + seconds) if every_hour else list(seconds)
        firsts.clear()
        seconds.clear()
        return out

    while True:
        local = local_times.get_next()
        placed = _placements(local, zone)
        if isinstance(placed, tuple):
            firsts.append(placed[0])
            seconds.append(placed[1])
            if placed[0] >= end:
                break
            continue
        pending = flush() + [placed]
        for moment in pending:
            if moment >= end:
                return
            if moment >= start and (last is None or moment > last):
                last = moment
                yield moment
    for moment in flush():
        if start <= moment < end and (last is None or moment > last):
            last = moment
            yield moment


def _interval_due_times(spec: IntervalScheduleSpec, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    # Integer microseconds: float seconds would drift over millions of periods.
    period = round(spec.every * 1_000_000)
    anchor = _micros(spec.anchor or EPOCH)
    first = _micros(start)
    k = -((anchor - first) // period)  # ceil((first - anchor) / period)
    moment = anchor + k * period
    stop = _micros(end)
    while moment < stop:
        yield EPOCH + dt.timedelta(microseconds=moment)
        moment += period


def _micros(value: dt.datetime) -> int:
    delta = _utc(value) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def due_times(schedule: Schedule, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Due times `t` with `start <= t < end`, ascending, as aware UTC datetimes."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        return iter(())
    if isinstance(schedule, CronScheduleSpec):
        if schedule.offset:
            shift = dt.timedelta(seconds=schedule.offset)
            return (moment + shift for moment in _cron_due_times(schedule, start - shift, end - shift))
        return _cron_due_times(schedule, start, end)
    if isinstance(schedule, IntervalScheduleSpec):
        return _interval_due_times(schedule, start, end)
    at = _utc(schedule.at)
    return iter([at] if start <= at < end else [])


def task_due_times(task: TaskSpec, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    if task.schedule is None or not task.enabled:
        return []
    return list(due_times(task.schedule, start, end))


def next_due_time(
    schedule: Schedule, after: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=400)
) -> dt.datetime | None:
    """The first due time strictly after `after`, looking at most `horizon` ahead."""
    return next(due_times(schedule, after + dt.timedelta(microseconds=1), after + horizon), None)


def format_due(value: dt.datetime) -> str:
    """Canonical text of a due time (UTC, milliseconds): part of idempotency keys and run keys."""
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_due(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
