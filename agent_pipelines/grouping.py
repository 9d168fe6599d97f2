"""Which tasks share an op, and which tasks form a workflow.

One op per task does not scale (thousands of ops load slowly, and the in-process executor
runs steps one after another, so a burst of tasks would be sent one by one). Tasks without
dependents therefore share ops, up to `MAX_TASKS_PER_OP`, per agent and retry policy, and one
step sends all of them concurrently. A task that others depend on gets an op of its own: a
retried step materializes only what is still missing, and Dagster would skip the downstream
steps of an output that a retry does not yield again.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import RetrySpec

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
    retry: RetrySpec
    tasks: tuple[str, ...]
    workflow: str | None


def find_workflows(catalog: Catalog) -> list[Workflow]:
    tasks = catalog.regular_tasks
    parent = {name: name for name in tasks}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for task in tasks.values():
        for dep in task.depends_on:
            parent[root(dep)] = root(task.name)
    members: dict[str, list[str]] = defaultdict(list)
    for name in tasks:  # catalog.tasks is upstream-first
        members[root(name)].append(name)
    workflows = []
    for names in members.values():
        if len(names) < 2:
            continue
        has_dependents = {dep for n in names for dep in catalog.tasks[n].depends_on}
        sinks = sorted(n for n in names if n not in has_dependents)
        workflows.append(Workflow(name=sinks[0], tasks=tuple(names)))
    return sorted(workflows, key=lambda w: w.name)


def _retry_key(retry: RetrySpec) -> str:
    return hashlib.sha256(retry.model_dump_json().encode()).hexdigest()[:6]


def group_tasks(catalog: Catalog, workflows: list[Workflow]) -> list[TaskGroup]:
    workflow_of = {task: wf.name for wf in workflows for task in wf.tasks}
    tasks = catalog.regular_tasks
    has_dependents = {dep for task in tasks.values() for dep in task.depends_on}
    groups: list[TaskGroup] = []
    shared: dict[tuple[str | None, str, str], list[str]] = defaultdict(list)
    for name, task in tasks.items():
        if name in has_dependents:
            groups.append(TaskGroup(name, task.agent or "", task.retries, (name,), workflow_of.get(name)))
        else:
            shared[(workflow_of.get(name), task.agent or "", _retry_key(task.retries))].append(name)

    retry_variants: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for workflow, agent, retry_key in sorted(shared, key=lambda k: (k[0] or "", k[1], k[2])):
        retry_variants[(workflow, agent)].append(retry_key)

    taken = set(catalog.tasks)
    for (workflow, agent, retry_key), names in sorted(shared.items(), key=lambda kv: (kv[0][0] or "", kv[0][1], kv[0][2])):
        names.sort()
        chunks = [names[i : i + MAX_TASKS_PER_OP] for i in range(0, len(names), MAX_TASKS_PER_OP)]
        base = f"{workflow}__{agent}" if workflow else f"tasks__{agent}"
        variants = retry_variants[(workflow, agent)]
        if len(variants) > 1:
            base += f"__r{variants.index(retry_key)}"
        for index, chunk in enumerate(chunks):
            if len(chunk) == 1 and len(chunks) == 1:
                op_name = chunk[0]
            else:
                op_name = base if len(chunks) == 1 else f"{base}__{index}"
                while op_name in taken:
                    op_name += "_"
            taken.add(op_name)
            retry = catalog.tasks[chunk[0]].retries
            groups.append(TaskGroup(op_name, agent, retry, tuple(chunk), workflow))
    return groups
