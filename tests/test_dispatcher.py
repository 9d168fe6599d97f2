"""Window runs on a real SQLite instance with a real demo agent: due times fired to the second,
exactly once, events picked up as they arrive, downstream tasks after their upstream."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.factory import ALL_TASKS_JOB, build_definitions
from agent_pipelines.store import StateStore
from agent_pipelines.timing import format_due, parse_due
from sensors.events import event_run_requests
from tests.conftest import write_catalog

UTC = dt.timezone.utc

TASKS = """\
sources:
  - {name: hooks, auth: {kind: bearer, token_env: HOOK_TOKEN}}
tasks:
  - {name: tick, owner: ops, agent: demo, prompt: "tick at {{ due_time.isoformat() }}", schedule: {every: 1s}}
  - name: pulse
    owner: ops
    agent: demo
    prompt: "pulse at {{ due_time.isoformat() }}"
    schedule: {every: 1s}
    retries: {count: 1, delay: 1s}
  - name: after_tick
    owner: ops
    agent: claw
    depends_on: [tick]
    prompt: "after {{ upstream.tick }}"
  - name: on_deploy
    owner: ops
    agent: demo
    events: [{source: hooks, type: deploy, match: {env: prod}}]
    prompt: "deploy {{ event.payload.version }} ({{ event.id }})"
    retries: {count: 1, delay: 1s}  # as pulse's: both share one op, hence one step and its retries
"""


@pytest.fixture
def defs(tmp_path: Path, demo_agent) -> dg.Definitions:
    catalog = load_catalog(write_catalog(tmp_path / "catalog", demo_agent.url, TASKS))
    assert catalog.ok, catalog.problems
    return build_definitions(catalog)


def _window(start_in_s: float, length_s: float) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.fromtimestamp(int(time.time() + start_in_s), UTC)
    return start, start + dt.timedelta(seconds=length_s)


def _window_run(defs, instance, window, *names):
    start, end = window
    return defs.resolve_job_def(ALL_TASKS_JOB).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(n) for n in names],
        tags={
            "agent_pipelines/window_start": format_due(start),
            "agent_pipelines/window_end": format_due(end),
            "agent_pipelines/trigger": "schedule",
        },
        raise_on_error=False,
    )


def _materializations(instance, key: str) -> list[dg.AssetMaterialization]:
    return [r.asset_materialization for r in instance.fetch_materializations(dg.AssetKey(key), limit=100).records]


def test_due_times_fire_on_time_and_exactly_once(defs, instance, demo_agent) -> None:
    window = _window(2, 3)
    result = _window_run(defs, instance, window, "tick")
    assert result.success
    requests = demo_agent.requests()
    assert len(requests) == 3
    for request in requests:
        due = parse_due(request.headers["idempotency-key"].split(":schedule:")[1])
        lateness = request.received_at - due.timestamp()
        assert 0 <= lateness < 0.1, f"request for {due} arrived {lateness * 1000:.1f} ms after its due time"
    materializations = _materializations(instance, "tick")
    assert len(materializations) == 3
    assert all(m.tags["dagster/code_version"] for m in materializations)
    assert {m.metadata["trigger"].value for m in materializations} == {"schedule"}
    assert all(m.metadata["lateness_ms"].value < 100 for m in materializations)

    # The same window run again (a duplicated or re-executed run): every due time is claimed.
    again = _window_run(defs, instance, window, "tick")
    assert again.success
    assert len(demo_agent.requests()) == 3
    assert len(_materializations(instance, "tick")) == 3


def test_due_times_past_their_grace_are_left_to_the_misfire_policy(defs, instance, demo_agent) -> None:
    start = dt.datetime.fromtimestamp(int(time.time()) - 300, UTC)
    result = _window_run(defs, instance, (start, start + dt.timedelta(seconds=3)), "tick")
    assert result.success
    assert demo_agent.requests() == []
    store = StateStore.for_instance(instance)
    assert store.executions_for_task("tick") == [], "nothing claimed: the reconciler decides"


def test_downstream_runs_after_its_upstream_in_the_window(defs, instance, demo_agent) -> None:
    result = _window_run(defs, instance, _window(1, 2), "tick", "after_tick")
    assert result.success
    paths = [(r.body["messages"][-1]["content"]) for r in demo_agent.requests()]
    assert [p.startswith("tick at") for p in paths] == [True, True, False]
    latest_tick = _materializations(instance, "tick")[0].metadata["output"].value
    assert paths[2] == f"after {latest_tick}"
    (after,) = _materializations(instance, "after_tick")
    assert after.tags["agent_pipelines/trigger"] == "schedule"


def test_downstream_does_nothing_when_its_upstream_did_not_run(defs, instance, demo_agent) -> None:
    result = _window_run(defs, instance, _window(0, 1), "after_tick")
    assert result.success
    assert demo_agent.requests() == []


def test_events_are_picked_up_while_the_window_run_waits(defs, instance, demo_agent) -> None:
    store = StateStore.for_instance(instance)
    window = _window(1, 4)
    inserted: dict[str, float] = {}

    def post_events() -> None:
        time.sleep(2.0)
        for version, env in (("1.2.3", "prod"), ("1.2.4", "staging")):
            event, _ = store.insert_event(event_id=f"hooks:{version}", source="hooks", type="deploy", payload={"version": version, "env": env})
            inserted[event.event_id] = time.time()

    poster = threading.Thread(target=post_events)
    poster.start()
    result = _window_run(defs, instance, window, "on_deploy")
    poster.join()
    assert result.success
    (request,) = demo_agent.requests()  # staging does not match
    assert request.body["messages"][-1]["content"] == "deploy 1.2.3 (hooks:1.2.3)"
    assert request.received_at - inserted["hooks:1.2.3"] < 1.0
    (materialization,) = _materializations(instance, "on_deploy")
    assert materialization.metadata["event_id"].value == "hooks:1.2.3"
    assert materialization.tags["agent_pipelines/trigger"] == "event"

    # The safety net sees the event as handled once it is old enough.
    requests, _ = event_run_requests(
        load_catalog(Path(defs.resolve_asset_graph().get(dg.AssetKey("on_deploy")).metadata["catalog_source"].value.split(":")[0]).parent),
        store,
        0,
        dt.datetime.now(UTC) + dt.timedelta(seconds=60),
    )
    assert requests == []


def test_a_step_retry_resends_the_failed_due_time_and_nothing_else(defs, instance, demo_agent) -> None:
    demo_agent.push_faults([{"status": 503}])
    result = _window_run(defs, instance, _window(1, 1), "pulse", "on_deploy")
    assert result.success, "the retried step sent the failed due time again"
    keys = [r.headers["idempotency-key"] for r in demo_agent.requests()]
    assert len(keys) == 2 and len(set(keys)) == 1, keys
    assert ":schedule:" in keys[0], "the event listener, which got no event, sent nothing"
    assert [m.metadata["attempts"].value for m in _materializations(instance, "pulse")] == [2]
    assert _materializations(instance, "on_deploy") == []
