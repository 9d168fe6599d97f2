"""Crashes on purpose, and the account of what they cost: for the chaos test and benchmark.

A kill lands either *aligned* (just before a due instant, the worst moment: claims prepared,
requests about to leave) or at a random moment. Afterwards `account` compares what the agent
received with the execution rows: each due time in the watched span must have been delivered
exactly once, or be explained by its row (`missed` with a reason); anything else is a finding.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent_pipelines.demo_agent import RecordedRequest
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.store import StateStore, status


def sleep_until_aligned(step_s: float, before_s: float, clock: Callable[[], float] = time.time) -> float:
    """Sleep until `before_s` before the next multiple of `step_s` (a due instant of an
    `every: <step_s>` task); returns that due instant."""
    now = clock()
    due = (int(now // step_s) + 1) * step_s
    if due - before_s <= now + 0.05:
        due += step_s
    time.sleep(due - before_s - clock())
    return due


def sleep_random(low_s: float, high_s: float, rng: random.Random) -> None:
    time.sleep(rng.uniform(low_s, high_s))


@dataclass(frozen=True)
class Due:
    key: str
    task: str
    due: dt.datetime
    deliveries: tuple[float, ...]  # when the agent received it
    status: str
    reason: str | None

    @property
    def first_delivery_delay_s(self) -> float | None:
        return self.deliveries[0] - self.due.timestamp() if self.deliveries else None


@dataclass
class Account:
    once: list[Due] = field(default_factory=list)
    twice: list[Due] = field(default_factory=list)
    never: list[Due] = field(default_factory=list)
    early: list[Due] = field(default_factory=list)

    @property
    def unexplained(self) -> list[Due]:
        """Never delivered and not accounted for by a terminal state with a reason: `missed` or
        `skipped`, or `unknown` (marked as leaving when the crash came: it may have arrived)."""
        return [d for d in self.never if d.status not in (status.MISSED, status.SKIPPED, status.UNKNOWN) or not d.reason]

    def never_by_state(self) -> dict[str, int]:
        return dict(collections.Counter(f"{d.status}: {d.reason}" for d in self.never))

    def summary(self) -> str:
        return (
            f"{len(self.once)} delivered once, {len(self.twice)} twice, {len(self.never)} never "
            f"({len(self.unexplained)} unexplained), {len(self.early)} early"
        )


#: Rows someone is still responsible for, or that wait for a carrier.
UNSETTLED = (status.CLAIMED, status.SENDING, status.RETRYING, status.CATCHUP, status.NOT_SENT)


def unsettled(store: StateStore, until: float) -> list[str]:
    """Executions due by `until` (unix seconds; or with no due time) not yet in a final state."""
    return [
        f"{e.idempotency_key} {e.status} {e.reason}"
        for state in UNSETTLED
        for e in store.executions_with_status(state)
        if e.due_time is None or e.due_time.timestamp() <= until
    ]


def schedule_key(task: str, due: dt.datetime) -> str:
    return f"agent-pipelines:{task}:schedule:{due.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"


def due_of(key: str) -> dt.datetime | None:
    if ":schedule:" not in key:
        return None
    try:
        return parse_due(key.split(":schedule:")[1])
    except ValueError:
        return None


def due_times(start: float, end: float, step_s: float) -> list[dt.datetime]:
    """The due instants of an `every: <step_s>` task within [start, end]."""
    first = int(start // step_s + (0 if start % step_s == 0 else 1)) * step_s
    count = int((end - first) // step_s) + 1 if end >= first else 0
    return [dt.datetime.fromtimestamp(first + i * step_s, dt.timezone.utc) for i in range(count)]


def rows_of(store: StateStore, tasks: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """Execution key -> (status, reason) for `tasks`."""
    return {
        e.idempotency_key: (e.status, e.reason)
        for task in tasks
        for e in store.executions_for_task(task, limit=100_000)
    }


def absent(store: StateStore, tasks: Sequence[str], start: float, end: float, step_s: float) -> list[str]:
    """Due times in [start, end] of `every: <step_s>` tasks that have no execution row yet.

    Not lost while within their grace: a rescue run killed while it was starting blocks its
    window's next rescue until Dagster's run monitoring fails it (`start_timeout_seconds`), then
    the window is rescued. A test waits for these as for unsettled ones, then accounts for them.
    """
    keys = {schedule_key(task, due) for task in tasks for due in due_times(start, end, step_s)}
    return sorted(keys - set(rows_of(store, tasks)))


def account(
    rows: Mapping[str, tuple[str, str | None]],
    requests: Iterable[RecordedRequest],
    tasks: Sequence[str],
    start: float,
    end: float,
    step_s: float,
) -> Account:
    """Each due time of `tasks` in [start, end] (unix seconds) by how often the agent got it;
    `rows` maps execution keys to (status, reason) (see `rows_of`)."""
    received: dict[str, list[float]] = collections.defaultdict(list)
    for request in requests:
        key = request.headers.get("idempotency-key", "")
        if key:
            received[key].append(request.received_at)
    result = Account()
    for task in tasks:
        for due in due_times(start, end, step_s):
            key = schedule_key(task, due)
            state, reason = rows.get(key, ("absent", None))
            item = Due(
                key=key,
                task=task,
                due=due,
                deliveries=tuple(sorted(received.get(key, ()))),
                status=state,
                reason=reason,
            )
            bucket = {0: result.never, 1: result.once}.get(len(item.deliveries), result.twice)
            bucket.append(item)
            if item.deliveries and item.deliveries[0] < due.timestamp():
                result.early.append(item)
    return result
