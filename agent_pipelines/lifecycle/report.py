"""What `agent-pipelines agent list` and the agents' assets show: each agent's lifecycle state,
its next due time, how long it was up, and its load (learned limit, requests in flight and
waiting, latency: `agent_pipelines.scheduling.load`)."""

from __future__ import annotations

import datetime as dt

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.lifecycle.controller import agent_hours
from agent_pipelines.lifecycle.decisions import next_due
from agent_pipelines.scheduling.load import LoadSummary, agent_loads, node_saturated
from agent_pipelines.store import StateStore

HEADER = (
    "agent", "kind", "lifecycle", "state", "since", "next due", "wakes 24h", "cold 24h", "hours up 24h",
    "limit", "in flight", "queued", "latency", "saturated",
)


def agent_rows(catalog: Catalog, store: StateStore, now: dt.datetime) -> list[tuple[str, ...]]:
    states = store.lifecycle_states()
    day_ago = now - dt.timedelta(days=1)
    events = store.lifecycle_events(since=day_ago - dt.timedelta(days=1))
    hours = agent_hours(events, now, since=day_ago)
    # a fleet's nodes are called by batch runs only, whose processes share their load too
    fleet_nodes = {spec.name: (fleet.name, spec) for fleet in catalog.fleets.values() for spec in fleet.node_specs}
    loads = agent_loads(store, sorted([*catalog.agents, *fleet_nodes]), now)
    rows: list[tuple[str, ...]] = [HEADER]
    for name, agent in sorted(catalog.agents.items()):
        load = _load_columns(loads.get(name), agent.max_concurrency)
        tasks = [t for t in catalog.regular_tasks.values() if t.agent == name]
        upcoming = next_due(tasks, now, dt.timedelta(days=2))
        due = f"{upcoming[0].isoformat(timespec='seconds')} ({upcoming[1]})" if upcoming else "-"
        if agent.lifecycle is None:
            rows.append((name, agent.kind, "always on", "-", "-", due, "-", "-", "-", *load))
            continue
        state = states.get(name)
        recent = [e for e in events if e.agent == name and e.at >= day_ago]
        rows.append(
            (
                name,
                agent.kind,
                agent.lifecycle.backend,
                state.state if state else "asleep",
                state.since.isoformat(timespec="seconds") if state else "-",
                due,
                str(sum(1 for e in recent if e.event == "wake")),
                str(sum(1 for e in recent if e.event == "cold")),
                f"{hours.get(name, 0.0):.2f}",
                *load,
            )
        )
    for name, (fleet, spec) in sorted(fleet_nodes.items()):
        load = _load_columns(loads.get(name), spec.max_concurrency, fleet_node=True)
        rows.append((name, spec.kind, f"node of {fleet}", "-", "-", "-", "-", "-", "-", *load))
    return rows


def _load_columns(load: LoadSummary | None, max_concurrency: int, fleet_node: bool = False) -> tuple[str, ...]:
    """limit (learned/max), in flight, queued, latency, saturated (a fleet node's as its fleet's
    check judges it: `node_saturated`); `-` before any run called it."""
    if load is None:
        return (f"{max_concurrency}/{max_concurrency}", "-", "-", "-", "-")
    latency = f"{load.latency_ms / 1000:.2f}s" if load.latency_ms is not None else "-"
    limit = f"{load.limit}/{load.max_limit}" + (" (measuring)" if load.measuring_baseline else "")
    saturated = node_saturated(load) if fleet_node else load.saturated
    return (limit, str(load.in_flight), str(load.queued), latency, "yes" if saturated else "no")
