"""What agents cost: tokens priced by the catalog (`pricing` on each agent) and the hours a
managed agent was awake (`lifecycle.hourly_cost`), per task, agent, owner and UTC day; and the
budgets (a task's `budget`, a team's top-level `budgets:`) they are held to.

Token cost is stored with each execution when it is settled (`agent_pipelines_executions.cost`);
hours come from the lifecycle's wake/sleep history. A budget is over when today's token cost of
its tasks exceeds `per_day`: the scheduler warns once per day and, with `pause: true`, pauses the
tasks until the next UTC day (then resumes those it paused, and only those).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.lifecycle.controller import agent_hours
from agent_pipelines.store import StateStore, schema

GROUPINGS = ("task", "agent", "owner")
#: A pause made by a budget carries this reason prefix (so only those are lifted the next day).
BUDGET_PAUSE = "budget exceeded"


def day_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def token_spend(store: StateStore, start: dt.datetime, end: dt.datetime) -> dict[str, tuple[int, float]]:
    """Task -> (executions with a cost, their token cost) created in [start, end)."""
    table = schema.executions
    query = (
        sa.select(table.c.task, sa.func.count(table.c.cost), sa.func.coalesce(sa.func.sum(table.c.cost), 0.0))
        .where(table.c.created_at >= start, table.c.created_at < end, table.c.cost.is_not(None))
        .group_by(table.c.task)
    )
    with store.engine.connect() as conn:
        return {task: (int(count), float(total)) for task, count, total in conn.execute(query).all()}


@dataclass(frozen=True)
class CostRow:
    day: dt.date
    group: str
    executions: int
    token_cost: float
    hours_up: float
    uptime_cost: float

    @property
    def total(self) -> float:
        return self.token_cost + self.uptime_cost


def cost_report(catalog: Catalog, store: StateStore, by: str, days: int, now: dt.datetime) -> list[CostRow]:
    """Per UTC day (newest first) and per task, agent or owner: token cost, and for agents and
    owners the hours their managed agents were up and what those cost."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(GROUPINGS)}, not {by!r}")
    today = day_start(now)
    events = store.lifecycle_events(since=today - dt.timedelta(days=days + 1))
    owners = _owners_by_agent(catalog)
    rows: list[CostRow] = []
    for back in range(days):
        start = today - dt.timedelta(days=back)
        end = min(start + dt.timedelta(days=1), now)
        tokens: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for task, (count, cost) in token_spend(store, start, end).items():
            key = _group_of(catalog, task, by)
            tokens[key][0] += count
            tokens[key][1] += cost
        uptime: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        if by != "task":
            for agent, hours in agent_hours([e for e in events if e.at < end], end, since=start).items():
                spec = catalog.agents.get(agent)
                price = spec.lifecycle.hourly_cost if spec is not None and spec.lifecycle is not None else None
                for key in [agent] if by == "agent" else owners.get(agent, ["(no task)"]):
                    uptime[key][0] += hours
                    uptime[key][1] += hours * (price or 0.0)
        for key in sorted(set(tokens) | set(uptime)):
            count, cost = tokens.get(key, [0, 0.0])
            hours, up_cost = uptime.get(key, [0.0, 0.0])
            rows.append(CostRow(start.date(), key, int(count), cost, hours, up_cost))
    return rows


def _group_of(catalog: Catalog, task: str, by: str) -> str:
    spec = catalog.tasks.get(task)
    if by == "task":
        return task
    if spec is None:
        return f"{task} (not in the catalog)"
    return (spec.agent or spec.fleet or "") if by == "agent" else spec.owner


def _owners_by_agent(catalog: Catalog) -> dict[str, list[str]]:
    owners: dict[str, set[str]] = defaultdict(set)
    for task in catalog.tasks.values():
        if task.agent:
            owners[task.agent].add(task.owner)
    return {agent: sorted(found) for agent, found in owners.items()}


@dataclass(frozen=True)
class Overrun:
    subject: str  # "task <name>" or "budget <name> (owner ...)"
    spent: float
    limit: float
    pause: bool
    tasks: tuple[str, ...]

    def describe(self) -> str:
        return f"{BUDGET_PAUSE}: {self.subject} spent {self.spent:.4f} of {self.limit:g} today (UTC)"


def overruns(catalog: Catalog, store: StateStore, now: dt.datetime) -> list[Overrun]:
    spent = {task: cost for task, (_count, cost) in token_spend(store, day_start(now), now + dt.timedelta(seconds=1)).items()}
    found = []
    for task in catalog.tasks.values():
        if task.budget is not None and spent.get(task.name, 0.0) > task.budget.per_day:
            found.append(Overrun(f"task {task.name}", spent[task.name], task.budget.per_day, task.budget.pause, (task.name,)))
    for budget in catalog.budgets.values():
        tasks = tuple(sorted(t.name for t in catalog.tasks.values() if t.owner == budget.owner))
        total = sum(spent.get(name, 0.0) for name in tasks)
        if total > budget.per_day:
            found.append(Overrun(f"budget {budget.name} (owner {budget.owner})", total, budget.per_day, budget.pause, tasks))
    return found


def enforce_budgets(catalog: Catalog, store: StateStore, now: dt.datetime, warned: Iterable[str]) -> tuple[list[Overrun], set[str]]:
    """Pause what an over budget says to pause, lift yesterday's budget pauses; returns the
    overruns not yet warned about today and the updated set of warned keys."""
    today = day_start(now).date().isoformat()
    warned_today = {key for key in warned if key.endswith(f"@{today}")}
    states = store.task_states()
    over = overruns(catalog, store, now)
    paused_now = set()
    for overrun in over:
        if overrun.pause:
            for task in overrun.tasks:
                paused_now.add(task)
                state = states.get(task)
                if state is None or not state.paused:
                    store.set_paused(task, True, reason=f"{overrun.describe()} (resumes tomorrow)", changed_by="budget")
    for task, state in states.items():
        if (
            state.paused
            and state.changed_by == "budget"
            and task not in paused_now
            and state.updated_at is not None
            and day_start(state.updated_at) < day_start(now)
        ):
            store.set_paused(task, False, reason="a new budget day", changed_by="budget")
    fresh = [o for o in over if f"{o.subject}@{today}" not in warned_today]
    return fresh, warned_today | {f"{o.subject}@{today}" for o in over}
