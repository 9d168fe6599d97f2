"""When tasks are due: cron (5 fields, or 6 with seconds first), fixed intervals, one-shot times.

Everything returns aware UTC datetimes. Five-field cron goes through Dagster's own iterator, so
daylight-saving transitions behave exactly as Dagster schedules do (a time skipped by the
spring change fires at the first valid time after it, a repeated time in autumn fires once).
A seconds field (OpenClaw/Quartz order: seconds first) expands each matching minute.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator

from croniter import croniter
from dagster._utils.schedules import cron_string_iterator

from agent_pipelines.catalog.model import (
    CronScheduleSpec,
    IntervalScheduleSpec,
    OneShotScheduleSpec,
    TaskSpec,
)

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
Schedule = CronScheduleSpec | IntervalScheduleSpec | OneShotScheduleSpec


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC)


@functools.lru_cache(maxsize=4096)
def _seconds_of(field: str) -> tuple[int, ...]:
    """The seconds a Quartz-style seconds field selects (same syntax as a minute field)."""
    expanded = croniter.expand(f"{field} * * * *")[0][0]
    return tuple(range(60)) if expanded == ["*"] else tuple(sorted(int(s) for s in expanded))


def _cron_due_times(spec: CronScheduleSpec, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    fields = spec.cron.split()
    if len(fields) == 5:
        for moment in cron_string_iterator(start.timestamp(), spec.cron, spec.timezone):
            if moment >= end:
                return
            yield _utc(moment)
        return
    seconds = _seconds_of(fields[0])
    minute_cron = " ".join(fields[1:])
    # Start one minute early: the minute containing `start` may still have due seconds.
    first_minute = start.timestamp() - start.timestamp() % 60
    for minute in cron_string_iterator(first_minute, minute_cron, spec.timezone):
        if minute >= end:
            return
        for second in seconds:
            moment = _utc(minute) + dt.timedelta(seconds=second)
            if moment >= end:
                return
            if moment >= start:
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
        return _cron_due_times(schedule, start, end)
    if isinstance(schedule, IntervalScheduleSpec):
        return _interval_due_times(schedule, start, end)
    at = _utc(schedule.at)
    return iter([at] if start <= at < end else [])


def task_due_times(task: TaskSpec, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    if task.schedule is None or not task.enabled:
        return []
    return list(due_times(task.schedule, start, end))


def next_due_time(schedule: Schedule, after: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=400)) -> dt.datetime | None:
    """The first due time at or after `after`, looking at most `horizon` ahead."""
    return next(due_times(schedule, after, after + horizon), None)


def format_due(value: dt.datetime) -> str:
    """Canonical text of a due time (UTC, milliseconds): part of idempotency keys and run keys."""
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_due(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
