"""What the Dagster UI shows of an agent's lifecycle: an observation on its asset
(`agents/<name>`) at every change of state, with the figures of the last 24 h as metadata (the
UI plots numeric metadata over time), and its `wakes` check: failed when a wake did not bring
the agent up, passed once it is ready."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from agent_pipelines.lifecycle.controller import agent_hours
from agent_pipelines.scheduling.publication import agent_asset_key
from agent_pipelines.store import StateStore
from agent_pipelines.store.lifecycle import FAILED, READY, LifecycleState

WAKES_CHECK = "wakes"


def lifecycle_events_for(store: StateStore, states: dict[str, LifecycleState], now: dt.datetime) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """An observation per agent in `states`, plus a `wakes` evaluation for those ready or failed."""
    day_ago = now - dt.timedelta(days=1)
    events = store.lifecycle_events(list(states), since=day_ago - dt.timedelta(days=1))
    hours = agent_hours(events, now, since=day_ago)
    published: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
    for agent, state in states.items():
        recent = [e for e in events if e.agent == agent and e.at >= day_ago]
        metadata = {
            "state": dg.MetadataValue.text(state.state),
            "since": dg.MetadataValue.timestamp(state.since),
            "why": dg.MetadataValue.text(state.detail or ""),
            "hours_up_24h": dg.MetadataValue.float(round(hours.get(agent, 0.0), 3)),
            "wakes_24h": dg.MetadataValue.int(sum(1 for e in recent if e.event == "wake")),
            "cold_starts_24h": dg.MetadataValue.int(sum(1 for e in recent if e.event == "cold")),
        }
        published.append(dg.AssetObservation(asset_key=agent_asset_key(agent), metadata=metadata))
        if state.state in (READY, FAILED):
            published.append(wakes_evaluation(agent, state))
    return published


def wakes_evaluation(agent: str, state: LifecycleState) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=agent_asset_key(agent),
        check_name=WAKES_CHECK,
        passed=state.state != FAILED,
        description=(state.detail or "") if state.state == FAILED else "its last wake brought it up",
        metadata={"state": dg.MetadataValue.text(state.state), "since": dg.MetadataValue.timestamp(state.since)},
    )
