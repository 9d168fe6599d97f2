"""Which tasks are due when, and which runs carry them.

Time is cut into windows of `WINDOW` (aligned to the epoch). Each window's due tasks travel in a
few *window runs* created well ahead by `task_scheduler_sensor`; their dispatcher sends each
execution at its due time. A workflow (tasks joined by `depends_on`) always travels whole in one
run, so a downstream task can follow its upstream at once; otherwise tasks are grouped by agent,
at most `MAX_TASKS_PER_RUN` per run. Due times are found with a heap that only moves forward, so
a tick with 10,000 tasks costs only the tasks that fall due, not a cron evaluation per task.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.kubernetes_config import block_key, merge, task_block
from agent_pipelines.scheduling.retries import worst_case_seconds
from agent_pipelines.scheduling.timing import UTC, due_times, format_due

WINDOW = dt.timedelta(seconds=60)
#: Window runs are requested this far ahead: sensor tick (5 s) + queue + run start + code load.
LEAD = dt.timedelta(seconds=75)
MAX_TASKS_PER_RUN = 2000
#: Start-up and slack on top of a run's window and its slowest execution (`max_runtime_seconds`).
RUN_OVERHEAD_S = 300
_LOOKAHEAD = dt.timedelta(days=366)


def window_floor(moment: dt.datetime) -> dt.datetime:
    seconds = int(WINDOW.total_seconds())
    stamp = int(moment.timestamp())
    return dt.datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def timed_tasks(catalog: Catalog) -> list[TaskSpec]:
    return [t for t in catalog.regular_tasks.values() if t.schedule is not None and t.enabled]


def listener_tasks(catalog: Catalog) -> list[TaskSpec]:
    return [t for t in catalog.regular_tasks.values() if t.events and t.enabled]


class DueIndex:
    """Every due time of the given tasks from `position` on, in order."""

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


def followers_in_run(catalog: Catalog, names: Iterable[str]) -> list[str]:
    """The tasks plus, transitively, the downstream tasks that follow them in the same run:
    those without a trigger of their own, and those with `on_upstream: true`."""
    selection = list(dict.fromkeys(names))
    frontier = list(selection)
    while frontier:
        current = frontier.pop()
        for child in catalog.downstream_of(current):
            task = catalog.tasks[child]
            own_trigger = task.schedule is not None or bool(task.events)
            if (task.on_upstream or not own_trigger) and task.enabled and child not in selection:
                selection.append(child)
                frontier.append(child)
    return selection


def units(catalog: Catalog) -> dict[str, str]:
    """Task -> the unit it travels in: its workflow (connected through `depends_on`), or itself."""
    parent = {name: name for name in catalog.regular_tasks}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for task in catalog.regular_tasks.values():
        for dep in task.depends_on:
            if dep in parent:
                parent[root(dep)] = root(task.name)
    return {name: root(name) for name in parent}


def max_runtime_seconds(catalog: Catalog, names: Iterable[str], window_s: float) -> int:
    """A `dagster/max_runtime` for a run carrying these tasks over a window of `window_s`.

    Run monitoring fails a run that exceeds it: with Dagster's default launcher that is how a
    run killed with its machine stops showing STARTED. Executions run concurrently, so the
    slowest one (all its attempts) bounds the tail after the window.
    """
    slowest = 0.0
    for name in names:
        task = catalog.tasks[name]
        agent = catalog.agents.get(task.agent or "")
        timeout = task.timeout or (agent.timeout if agent is not None else 120.0)
        slowest = max(slowest, worst_case_seconds(task, timeout))
    return int(window_s + slowest + RUN_OVERHEAD_S)


@dataclass(frozen=True)
class WindowRun:
    run_key: str
    tasks: tuple[str, ...]


def window_runs(catalog: Catalog, window_start: dt.datetime, due: Iterable[str], listeners: Iterable[str]) -> list[WindowRun]:
    """Split a window's tasks into runs: whole workflows, grouped by agent, bounded in size."""
    names = followers_in_run(catalog, [*due, *listeners])
    unit_of = units(catalog)
    members: dict[str, list[str]] = defaultdict(list)
    for name in names:
        members[unit_of.get(name, name)].append(name)
    # Tasks of one run share one pod on Kubernetes, so runs never mix pod configurations.
    pods = {}
    for group in members.values():
        key = block_key(merge(task_block(catalog, name) for name in group))
        pods.update(dict.fromkeys(group, key))
    ordered = sorted(members.values(), key=lambda group: (pods[group[0]], catalog.tasks[group[0]].agent or "", group[0]))
    runs: list[list[str]] = [[]]
    for group in ordered:
        if runs[-1] and (len(runs[-1]) + len(group) > MAX_TASKS_PER_RUN or pods[runs[-1][0]] != pods[group[0]]):
            runs.append([])
        runs[-1].extend(group)
    stamp = format_due(window_start)
    return [WindowRun(f"window:{stamp}:{index}", tuple(tasks)) for index, tasks in enumerate(runs) if tasks]
