"""Cost per execution, task, agent, owner and day, and budgets, on real runs against a real demo
agent: tokens priced by the agent's `pricing` (per model where it says so) are stored with each
execution and shown on its materialization; agent-hours of managed agents are priced by
`hourly_cost`; a task or team over its daily budget is warned about once and paused when its
budget says so, then resumed the next day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.catalog.model import PricingSpec
from agent_pipelines.costs import cost_report, enforce_budgets, overruns
from agent_pipelines.store import StateStore
from tests.test_task_execution import _defs, _materializations, _run

PRICED = """\
  - name: priced
    kind: openai_chat
    base_url: {url}
    auth_env: DEMO_AGENT_TOKEN
    model: demo-model
    pricing: {{input_per_1k: 1.0, output_per_1k: 2.0, models: {{cheap-model: {{input_per_1k: 0.1, output_per_1k: 0.1}}}}}}
    lifecycle: {{command: {{start: "true"}}, hourly_cost: 0.5}}
"""
TASKS = """\
budgets:
  - {name: research_daily, owner: "team:research", per_day: 0.05, pause: true}
tasks:
  - {name: summary, owner: "team:research", agent: priced, prompt: "Summarize the news."}
  - {name: digest, owner: "team:research", agent: priced, prompt: "Digest the news."}
  - {name: watch, owner: "team:ops", agent: priced, prompt: "Watch it.", budget: {per_day: 0.01}}
  - {name: free, owner: "team:ops", agent: demo, prompt: "No price on this agent."}
"""


def test_a_price_table_per_agent_and_per_model() -> None:
    pricing = PricingSpec(input_per_1k=1.0, output_per_1k=2.0, models={"cheap": {"input_per_1k": 0.1, "output_per_1k": 0.2}})
    assert pricing.price_for("demo-model").output_per_1k == 2.0
    assert pricing.price_for("cheap").input_per_1k == 0.1


def test_costs_per_execution_task_agent_owner_and_budgets(tmp_path: Path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, TASKS, extra_agents=PRICED.format(url=demo_agent.url))
    catalog = load_catalog(tmp_path / "catalog")
    assert catalog.ok, catalog.problems
    result = _run(defs, instance, "summary", "digest", "watch", "free")
    assert result.success
    shown = _materializations(result)
    metadata = {name: {k: v.value for k, v in m.metadata.items()} for name, m in shown.items()}
    tokens_in, tokens_out = metadata["summary"]["tokens_in"], metadata["summary"]["tokens_out"]
    expected = (tokens_in * 1.0 + tokens_out * 2.0) / 1000
    assert metadata["summary"]["cost"] == pytest.approx(expected)
    assert "cost" not in metadata["free"], "an agent without prices has no cost"
    store = StateStore.for_instance(instance)
    key = metadata["summary"]["idempotency_key"]
    assert store.get_execution(key).cost == pytest.approx(expected)

    # The managed agent was up for 30 minutes today: half an hour at 0.5.
    # The run woke it on demand a moment ago; it is put to sleep now, so that stretch counts
    # seconds. The report's clock is passed in: at least an hour into its UTC day, so the half
    # hour fits in today before it whenever the test runs (it failed between 00:00 and 00:30 UTC,
    # then between 00:30 and 01:00 while the on-demand wake stayed open up to that clock).
    actual = dt.datetime.now(dt.timezone.utc)
    store.record_lifecycle_event("priced", "sleep", actual)
    now = max(actual, actual.replace(hour=1, minute=0, second=0, microsecond=0))
    start = now - dt.timedelta(hours=1)
    store.record_lifecycle_event("priced", "wake", start)
    store.record_lifecycle_event("priced", "sleep", start + dt.timedelta(minutes=30))

    by_task = {r.group: r for r in cost_report(catalog, store, "task", 1, now)}
    assert set(by_task) == {"summary", "digest", "watch"}
    assert by_task["summary"].token_cost == pytest.approx(expected) and by_task["summary"].executions == 1
    by_agent = {r.group: r for r in cost_report(catalog, store, "agent", 1, now)}
    assert by_agent["priced"].token_cost == pytest.approx(sum(by_task[t].token_cost for t in ("summary", "digest", "watch")))
    assert by_agent["priced"].hours_up == pytest.approx(0.5, abs=0.01) and by_agent["priced"].uptime_cost == pytest.approx(0.25, abs=0.01)
    by_owner = {r.group: r for r in cost_report(catalog, store, "owner", 1, now)}
    assert by_owner["team:research"].token_cost == pytest.approx(by_task["summary"].token_cost + by_task["digest"].token_cost)

    # Budgets: the team's (with pause) and `watch`'s (warn only) are over.
    over = {o.subject: o for o in overruns(catalog, store, now)}
    assert set(over) == {"budget research_daily (owner team:research)", "task watch"}, over
    fresh, warned = enforce_budgets(catalog, store, now, [])
    assert len(fresh) == 2
    states = store.task_states()
    assert states["summary"].paused and states["digest"].paused and states["summary"].reason.startswith("budget exceeded")
    assert "watch" not in states or not states["watch"].paused, "warn only"
    again, warned = enforce_budgets(catalog, store, now + dt.timedelta(minutes=1), warned)
    assert again == [], "warned once per day"
    # The next day (no spend yet), the budget's pauses are lifted; a pause by a person is not.
    store.set_paused("free", True, reason="by hand", changed_by="alice")
    tomorrow = now + dt.timedelta(days=1)
    _fresh, _warned = enforce_budgets(catalog, store, tomorrow.replace(hour=0, minute=5), warned)
    states = store.task_states()
    assert not states["summary"].paused and not states["digest"].paused
    assert states["free"].paused


def test_the_cost_sensor_puts_todays_cost_per_team_on_the_catalog_asset(tmp_path: Path, demo_agent, instance) -> None:
    import dagster as dg

    from agent_pipelines.scheduling.publication import CATALOG_ASSET_KEY
    from sensors.costs import build_cost_sensor
    from tests.conftest import sensor_context

    defs = _defs(tmp_path, demo_agent.url, TASKS, extra_agents=PRICED.format(url=demo_agent.url))
    catalog = load_catalog(tmp_path / "catalog")
    assert _run(defs, instance, "summary", "digest").success
    sensor = build_cost_sensor(catalog)
    assert sensor is not None
    result = sensor(sensor_context(instance))
    (record,) = instance.fetch_observations(CATALOG_ASSET_KEY, limit=5).records
    metadata = {k: v.value for k, v in record.asset_observation.metadata.items()}
    spent = sum(r.token_cost for r in cost_report(catalog, StateStore.for_instance(instance), "task", 1, dt.datetime.now(dt.timezone.utc)))
    assert metadata["cost_today team:research"] == pytest.approx(spent, rel=1e-3, abs=0.02)
    assert metadata["cost_today_total"] >= metadata["cost_today team:research"]
    assert {r.data["group"] for r in metadata["today_by_agent"].records} == {"priced"}
    # A minute later: budgets checked again, no second observation before ten minutes.
    sensor(sensor_context(instance, cursor=result.cursor))
    assert len(instance.fetch_observations(CATALOG_ASSET_KEY, limit=5).records) == 1
    assert isinstance(result, dg.SensorResult)
