"""When the next attempt of a failed execution leaves, and until when it is worth trying.

One formula for every retry (scheduled, event and manual executions, batch items): the delay
grows with the retry number (`constant`, `linear` or `exponential`), is capped at `max_delay`,
and is spread by jitter so that many executions failing together do not retry together.
"""

from __future__ import annotations

import datetime as dt
import random

from agent_pipelines.catalog.model import RetrySpec, TaskSpec
from agent_pipelines.scheduling.timing import next_due_time

_GROWTH = {"constant": lambda n: 1, "linear": lambda n: n, "exponential": lambda n: 2 ** (n - 1)}


def retry_delay(spec: RetrySpec, retry_number: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry)."""
    base = min(spec.delay * _GROWTH[spec.backoff](max(1, retry_number)), spec.max_delay)
    rng = rng or random
    if spec.jitter == "full":
        return rng.uniform(0.0, base)
    if spec.jitter == "plus_minus":
        return max(0.0, min(spec.max_delay, base * rng.uniform(0.75, 1.25)))
    return base


def deadline_for(task: TaskSpec, due: dt.datetime | None, triggered_at: dt.datetime) -> dt.datetime | None:
    """The moment after which no attempt of this execution starts (None: only `count` limits)."""
    until = task.retries.until
    if until is None:
        return None
    if until == "next_due":
        assert task.schedule is not None
        return next_due_time(task.schedule, due or triggered_at)
    return (due or triggered_at) + dt.timedelta(seconds=float(until))


def worst_case_seconds(task: TaskSpec, timeout_s: float) -> float:
    """How long one execution can take: every attempt timing out, every wait at its longest."""
    spec = task.retries
    waits = sum(min(spec.delay * _GROWTH[spec.backoff](n), spec.max_delay) * 1.25 for n in range(1, spec.count + 1))
    total = timeout_s * (spec.count + 1) + waits
    if spec.until is not None and spec.until != "next_due":
        total = min(total, float(spec.until) + timeout_s)
    return total
