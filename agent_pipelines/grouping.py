"""Which tasks share an op (the step a manual materialization runs), and which form a workflow.

One op per task does not scale (thousands of ops load slowly), so tasks share ops, up to
`MAX_TASKS_PER_OP`, per workflow and agent; one step sends all of its selected tasks
concurrently. A task gets an op of its own when others depend on it (a downstream step must wait
for exactly its upstream step) or when it is started by events (launching it by hand needs a
sample event in its config, which must not be asked of the tasks beside it). Op names say what
they hold: the task's name, or `<agent>_tasks` (`<workflow>_<agent>_tasks` inside a workflow).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.planning import units

#: One op that yields N MaterializeResults costs O(N^2) in Dagster (DAGSTER_NOTES.md).
MAX_TASKS_PER_OP = 100


@dataclass(frozen=True)
class Workflow:
    """Tasks connected through `depends_on`; named after its (first) final task."""

    name: str
    tasks: tuple[str, ...]  # upstream first

    @property
    def job_name(self) -> str:
        return f"{self.name}_workflow_job"


@dataclass(frozen=True)
class TaskGroup:
    op_name: str
    agent: str
    tasks: tuple[str, ...]
    workflow: str | None


def find_workflows(catalog: Catalog) -> list[Workflow]:
    members: dict[str, list[str]] = defaultdict(list)
    for name, unit in units(catalog).items():
        members[unit].append(name)
    order = {name: index for index, name in enumerate(catalog.tasks)}  # upstream first
    workflows = []
    for names in members.values():
        if len(names) < 2:
            continue
        names.sort(key=order.__getitem__)
        has_dependents = {dep for n in names for dep in catalog.tasks[n].depends_on}
        sinks = sorted(n for n in names if n not in has_dependents)
        workflows.append(Workflow(name=sinks[0], tasks=tuple(names)))
    return sorted(workflows, key=lambda w: w.name)


def group_tasks(catalog: Catalog, workflows: list[Workflow]) -> list[TaskGroup]:
    workflow_of = {task: wf.name for wf in workflows for task in wf.tasks}
    tasks = catalog.regular_tasks
    has_dependents = {dep for task in tasks.values() for dep in task.depends_on}
    groups: list[TaskGroup] = []
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, task in tasks.items():
        if name in has_dependents or task.events:
            groups.append(TaskGroup(name, task.agent or "", (name,), workflow_of.get(name)))
        else:
            shared[(workflow_of.get(name) or "", task.agent or "")].append(name)
    taken = set(catalog.tasks)
    for (workflow, agent), names in sorted(shared.items()):
        names.sort()
        chunks = [names[i : i + MAX_TASKS_PER_OP] for i in range(0, len(names), MAX_TASKS_PER_OP)]
        base = f"{workflow}_{agent}_tasks" if workflow else f"{agent}_tasks"
        for index, chunk in enumerate(chunks):
            if len(chunk) == 1 and len(chunks) == 1:
                op_name = chunk[0]
            else:
                op_name = base if index == 0 else f"{base}_{index + 1}"
                while op_name in taken:
                    op_name += "_"
            taken.add(op_name)
            groups.append(TaskGroup(op_name, agent, tuple(chunk), workflow or None))
    return groups


def op_of(catalog: Catalog) -> dict[str, str]:
    """Task -> the op that materializes it (for run config addressed to a task)."""
    return {name: group.op_name for group in group_tasks(catalog, find_workflows(catalog)) for name in group.tasks}
