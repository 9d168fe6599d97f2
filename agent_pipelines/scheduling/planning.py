"""Planning time-triggered work: which tasks are due when, and which runs carry them.

Time is cut into windows of `WINDOW` (aligned to the epoch). Each window's due tasks travel in
a few *window runs* (at most `MAX_GROUPS_PER_WINDOW_RUN` ops each) created well ahead by
`task_scheduler_sensor`; their dispatcher sends each execution at its due time. Due times are
found with a heap that only moves forward, so a tick with 10,000 tasks costs only the tasks
that fall due, not a cron evaluation per task.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.timing import UTC, due_times, format_due

WINDOW = dt.timedelta(seconds=60)
#: Window runs are requested this far ahead: sensor tick (5 s) + queue + run start + code load.
LEAD = dt.timedelta(seconds=75)
MAX_GROUPS_PER_WINDOW_RUN = 10
#: Start-up, materialization and slack on top of a run's agent calls (see `max_runtime_seconds`).
RUN_OVERHEAD_S = 300
_LOOKAHEAD = dt.timedelta(days=366)


def window_floor(moment: dt.datetime) -> dt.datetime:
    seconds = int(WINDOW.total_seconds())
    stamp = int(moment.timestamp())
    return dt.datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def timed_tasks(catalog: Catalog) -> list[TaskSpec]:
    return [t for t in catalog.tasks.values() if t.schedule is not None and t.enabled]


class DueIndex:
    """Every due time of the catalog's timed tasks from `position` on, in order."""

    def __init__(self, tasks: Iterable[TaskSpec], position: dt.datetime) -> None:
        self.position = position
        self._tasks = {t.name: t for t in tasks}
        self._iterators = {}
        self._heap: list[tuple[dt.datetime, str]] = []
        for name, task in self._tasks.items():
            assert task.schedule is not None
            iterator = due_times(task.schedule, position, position + _LOOKAHEAD)
            self._iterators[name] = iterator
            first = next(iterator, None)
            if first is not None:
                self._heap.append((first, name))
        heapq.heapify(self._heap)

    def pop_until(self, end: dt.datetime) -> list[tuple[TaskSpec, dt.datetime]]:
        """Due times in `[position, end)`; the index then stands at `end`."""
        found: list[tuple[TaskSpec, dt.datetime]] = []
        while self._heap and self._heap[0][0] < end:
            due, name = heapq.heappop(self._heap)
            found.append((self._tasks[name], due))
            upcoming = next(self._iterators[name], None)
            if upcoming is not None:
                heapq.heappush(self._heap, (upcoming, name))
        self.position = max(self.position, end)
        return found


_INDEXES: dict[tuple[str, str], DueIndex] = {}


def due_index(catalog: Catalog, purpose: str, position: dt.datetime) -> DueIndex:
    """A cached index standing at `position` (rebuilt when the process or catalog is new)."""
    key = (catalog.fingerprint(), purpose)
    index = _INDEXES.get(key)
    if index is None or index.position != position:
        index = DueIndex(timed_tasks(catalog), position)
        _INDEXES[key] = index
    return index


def downstream_in_run(catalog: Catalog, names: Iterable[str]) -> list[str]:
    """The tasks plus, transitively, their dependents that have no trigger of their own."""
    selection = list(dict.fromkeys(names))
    frontier = list(selection)
    while frontier:
        current = frontier.pop()
        for child in catalog.downstream_of(current):
            task = catalog.tasks[child]
            # Tasks with their own trigger (schedule, events, `on_upstream`) run in their own runs.
            if task.schedule is None and not task.events and not task.on_upstream and child not in selection:
                selection.append(child)
                frontier.append(child)
    return selection


def worst_case_seconds(catalog: Catalog, task: TaskSpec) -> float:
    """How long one execution of `task` can take: every attempt timing out, every retry delay
    at its longest (jitter may add up to the delay itself)."""
    agent = catalog.agents.get(task.agent)
    timeout = task.timeout or (agent.timeout if agent is not None else 120.0)
    retry = task.retries
    growth = {"exponential": lambda i: 2**i, "linear": lambda i: i + 1, "constant": lambda i: 1}[retry.backoff]
    delays = sum(retry.delay * growth(i) * 2 for i in range(retry.count))
    return timeout * (retry.count + 1) + delays


def max_runtime_seconds(catalog: Catalog, unit_of: Mapping[str, str], names: Iterable[str], before: float) -> int:
    """A `dagster/max_runtime` for a run of these tasks that starts up to `before` seconds early.

    Run monitoring fails a run that exceeds it: with Dagster's default launcher that is how a
    run killed with its machine stops showing STARTED. Steps run one after another, each unit's
    slowest task bounding its step.
    """
    slowest: dict[str, float] = {}
    for name in names:
        unit = unit_of.get(name, name)
        slowest[unit] = max(slowest.get(unit, 0.0), worst_case_seconds(catalog, catalog.tasks[name]))
    return int(before + sum(slowest.values()) + RUN_OVERHEAD_S)


@dataclass(frozen=True)
class WindowRun:
    run_key: str
    tasks: tuple[str, ...]


def window_runs(
    catalog: Catalog,
    unit_of: Mapping[str, str],
    window_start: dt.datetime,
    due_task_names: Iterable[str],
    listeners: Iterable[str],
) -> list[WindowRun]:
    """Split a window's tasks into runs of at most `MAX_GROUPS_PER_WINDOW_RUN` units.

    A unit is one shared op, or a whole workflow, which must stay in one run so that its
    downstream steps see their upstream outputs.
    """
    names = downstream_in_run(catalog, due_task_names)
    names += [n for n in listeners if n not in names]
    by_unit: dict[str, list[str]] = {}
    for name in names:
        by_unit.setdefault(unit_of[name], []).append(name)
    units = sorted(by_unit)
    runs = []
    for index in range(0, len(units), MAX_GROUPS_PER_WINDOW_RUN):
        chunk = units[index : index + MAX_GROUPS_PER_WINDOW_RUN]
        tasks = tuple(name for unit in chunk for name in by_unit[unit])
        runs.append(WindowRun(f"window:{format_due(window_start)}:{index // MAX_GROUPS_PER_WINDOW_RUN}", tasks))
    return runs
