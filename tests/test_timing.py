"""Due times: 5- and 6-field cron with time zones and DST, intervals with anchors, one-shots."""

from __future__ import annotations

import datetime as dt

import pytest

from agent_pipelines.catalog.model import CronScheduleSpec, IntervalScheduleSpec, OneShotScheduleSpec
from agent_pipelines.scheduling.planning import DueIndex, window_floor
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.timing import due_times, format_due, next_due_time, parse_due

UTC = dt.timezone.utc


def _due(spec, start: str, end: str) -> list[str]:
    return [format_due(t) for t in due_times(spec, parse_due(start), parse_due(end))]


def test_interval_is_aligned_to_the_epoch() -> None:
    assert _due(IntervalScheduleSpec(every="5s"), "2026-01-01T00:00:01Z", "2026-01-01T00:00:16Z") == [
        "2026-01-01T00:00:05.000Z",
        "2026-01-01T00:00:10.000Z",
        "2026-01-01T00:00:15.000Z",
    ]
    # 90 s does not divide a minute: still aligned to the epoch, not to the start.
    assert _due(IntervalScheduleSpec(every="90s"), "2026-01-01T00:00:00Z", "2026-01-01T00:04:00Z") == [
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:01:30.000Z",
        "2026-01-01T00:03:00.000Z",
    ]


def test_interval_with_anchor_and_fractions() -> None:
    spec = IntervalScheduleSpec(every="2h", anchor="2026-01-01T00:30:00+01:00")
    assert _due(spec, "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z") == [
        "2026-01-01T01:30:00.000Z",
        "2026-01-01T03:30:00.000Z",
    ]
    assert _due(IntervalScheduleSpec(every="1.5s"), "2026-01-01T00:00:00.100Z", "2026-01-01T00:00:05Z") == [
        "2026-01-01T00:00:01.500Z",
        "2026-01-01T00:00:03.000Z",
        "2026-01-01T00:00:04.500Z",
    ]


def test_interval_does_not_drift_over_a_year() -> None:
    spec = IntervalScheduleSpec(every="7s")
    start = parse_due("2027-01-01T00:00:00Z")
    first = next_due_time(spec, start)
    assert first is not None and int(first.timestamp()) % 7 == 0 and first.microsecond == 0


def test_six_field_cron_has_seconds_first() -> None:
    spec = CronScheduleSpec(cron="*/20 * * * * *")
    assert _due(spec, "2026-01-01T00:00:10Z", "2026-01-01T00:01:01Z") == [
        "2026-01-01T00:00:20.000Z",
        "2026-01-01T00:00:40.000Z",
        "2026-01-01T00:01:00.000Z",
    ]
    spec = CronScheduleSpec(cron="30 0 9 * * MON-FRI", timezone="Asia/Shanghai")
    assert _due(spec, "2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z") == ["2026-11-23T01:00:30.000Z"]


def test_cron_offset_shifts_every_due_time() -> None:
    """OpenClaw staggers a job's top-of-hour runs by a stable per-job offset (milliseconds)."""
    spec = CronScheduleSpec(cron="0 * * * *", offset="83.246s")
    assert _due(spec, "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z") == [
        "2026-01-01T00:01:23.246Z",
        "2026-01-01T01:01:23.246Z",
    ]
    # A window that starts between a cron time and its shifted due time still finds it.
    assert _due(spec, "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z") == ["2026-01-01T00:01:23.246Z"]
    assert next_due_time(spec, parse_due("2026-01-01T00:01:23.246Z")) == parse_due("2026-01-01T01:01:23.246Z")
    spec = CronScheduleSpec(cron="30 0 9 * * MON-FRI", timezone="Europe/Berlin", offset="90s")
    assert _due(spec, "2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z") == ["2026-11-23T08:02:00.000Z"]
    assert spec.describe() == "cron `30 0 9 * * MON-FRI` + 90s (Europe/Berlin)"


def test_five_field_cron_in_a_time_zone() -> None:
    spec = CronScheduleSpec(cron="0 9 * * *", timezone="Europe/Paris")
    assert _due(spec, "2026-07-01T00:00:00Z", "2026-07-02T00:00:00Z") == ["2026-07-01T07:00:00.000Z"]
    assert _due(spec, "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z") == ["2026-12-01T08:00:00.000Z"]


@pytest.mark.parametrize(
    ("cron", "start", "end", "expected"),
    [
        # Spring forward in Paris (02:00 -> 03:00 on 29 March 2026): 02:30 does not exist and
        # fires once at the first valid time after it.
        ("30 2 * * *", "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z", ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]),
        # Fall back (03:00 -> 02:00 on 25 October 2026): 02:30 happens twice and fires once.
        ("30 2 * * *", "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z", ["2026-10-25T01:30:00.000Z", "2026-10-26T01:30:00.000Z"]),
        # An hourly task keeps firing every real hour through the transition.
        ("0 * * * *", "2026-10-25T00:00:00Z", "2026-10-25T03:00:00Z", ["2026-10-25T00:00:00.000Z", "2026-10-25T01:00:00.000Z", "2026-10-25T02:00:00.000Z"]),
    ],
)
def test_daylight_saving_transitions(cron, start, end, expected) -> None:
    assert _due(CronScheduleSpec(cron=cron, timezone="Europe/Paris"), start, end) == expected


def test_one_shot() -> None:
    spec = OneShotScheduleSpec(at="2026-12-01T09:00:00+08:00")
    assert _due(spec, "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z") == ["2026-12-01T01:00:00.000Z"]
    assert _due(spec, "2026-12-01T01:00:00.001Z", "2026-12-02T00:00:00Z") == []


def test_due_index_walks_all_tasks_in_order() -> None:
    tasks = [
        TaskSpec(name="fast", owner="x", agent="a", prompt="p", schedule={"every": "20s"}),
        TaskSpec(name="minutely", owner="x", agent="a", prompt="p", schedule="* * * * *"),
        TaskSpec(name="once", owner="x", agent="a", prompt="p", schedule={"at": "2026-01-01T00:00:30Z"}),
    ]
    index = DueIndex(tasks, parse_due("2026-01-01T00:00:00Z"))
    first = [(t.name, format_due(d)) for t, d in index.pop_until(parse_due("2026-01-01T00:01:00Z"))]
    assert first == [
        ("fast", "2026-01-01T00:00:00.000Z"),
        ("minutely", "2026-01-01T00:00:00.000Z"),
        ("fast", "2026-01-01T00:00:20.000Z"),
        ("once", "2026-01-01T00:00:30.000Z"),
        ("fast", "2026-01-01T00:00:40.000Z"),
    ]
    second = [(t.name, format_due(d)) for t, d in index.pop_until(parse_due("2026-01-01T00:01:30Z"))]
    assert second == [("fast", "2026-01-01T00:01:00.000Z"), ("minutely", "2026-01-01T00:01:00.000Z"), ("fast", "2026-01-01T00:01:20.000Z")]


def test_window_floor() -> None:
    assert format_due(window_floor(parse_due("2026-01-01T10:11:59.999Z"))) == "2026-01-01T10:11:00.000Z"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"cron": "75 * * * * *"}, "invalid seconds field"),
        ({"cron": "0 * * * *", "offset": "2d"}, "less than 86400"),
        ({"cron": "* * *"}, "expected 5 fields"),
        ({"every": "500ms"}, "greater than or equal to 1"),
        ({"every": "5s", "anchor": "2026-01-01T00:00:00"}, "needs a UTC offset"),
        ({"at": "2026-12-01T09:00:00"}, "needs a UTC offset"),
        ({"cron": "* * * * *", "every": "5s"}, "exactly one of `cron`, `every` or `at`"),
        ({"timezone": "UTC"}, "exactly one of `cron`, `every` or `at`"),
    ],
)
def test_schedule_validation(schedule, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TaskSpec(name="t", owner="x", agent="a", prompt="p", schedule=schedule)
