"""A fleet is an asset `fleets/<name>`, and `agent_load_sensor` puts its nodes' load on it: totals
over the nodes (plotted) and a `nodes` table, reported again only when a node's figures change;
its `not_saturated` check fails while any node is saturated, naming it.

Load views go into a real store the way batch runs write them (`record_agent_load`), and the
sensor ticks against a real SQLite instance as the daemon runs it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import Catalog, load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.scheduling.load import SATURATED_WAIT_S, LoadSummary, agent_loads, node_saturated
from agent_pipelines.scheduling.load_publication import MAX_NODE_ROWS, NOT_SATURATED_CHECK, fleet_load_metadata
from agent_pipelines.scheduling.publication import agent_asset_key, fleet_asset_key
from agent_pipelines.store import AgentLoad, StateStore
from tests.conftest import sensor_context, write_catalog
from tests.support.sqlite_limits import as_upstream_sqlite

UTC = dt.timezone.utc
SWARM = fleet_asset_key("swarm")
NODES = ("swarm_node0", "swarm_node1", "swarm_node2")

FLEETS_YAML = """\
fleets:
  - name: swarm
    kind: openai_chat
    model: demo-model
    auth_env: DEMO_AGENT_TOKEN
    max_concurrency: 4
    base_url_template: "http://127.0.0.1:18901/{i}"
    count: 3
  - name: claws
    kind: openclaw
    description: Two gateways of the support team.
    auth_env: DEMO_AGENT_TOKEN
    nodes:
      - {name: a, base_url: "http://127.0.0.1:18902"}
      - {name: b, base_url: "http://127.0.0.1:18903"}
"""


def _fleets_only(tmp_path: Path) -> Catalog:
    """Fleets, and no agent or task: batch tasks are what call fleets, and none is needed here."""
    directory = tmp_path / "fleets_only"
    directory.mkdir()
    (directory / "fleets.yaml").write_text(FLEETS_YAML)
    catalog = load_catalog(directory)
    assert catalog.ok and not catalog.agents, catalog.problems
    return catalog


@pytest.fixture
def store(instance: dg.DagsterInstance) -> Iterator[StateStore]:
    state = StateStore.for_instance(instance)
    yield state
    state.engine.dispose()


def _view(
    agent: str, in_flight: int, limit: int, latency_ms: float | None, at: dt.datetime, holder: str = "batch-run:1", queued: int = 0, oldest_wait_s: float | None = None
) -> AgentLoad:
    return AgentLoad(
        agent=agent, holder=holder, limit=limit, max_limit=4, in_flight=in_flight, queued=queued, updated_at=at, latency_ms=latency_ms, oldest_wait_s=oldest_wait_s
    )


def _observations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.AssetObservation]:
    """Newest first."""
    return [r.asset_observation for r in instance.fetch_observations(key, limit=50).records]


def _value(observation: dg.AssetObservation, name: str):  # noqa: ANN202 - a metadata value's payload
    return observation.metadata[name].value


def test_each_fleet_is_an_asset_with_its_nodes(tmp_path: Path) -> None:
    catalog = _fleets_only(tmp_path)
    graph = build_definitions(catalog).resolve_asset_graph()
    swarm, claws = graph.get(SWARM), graph.get(fleet_asset_key("claws"))
    assert swarm.group_name == claws.group_name == "agents"
    assert swarm.kinds == {"openai_chat"} and claws.kinds == {"openclaw"}
    assert swarm.description == "3 openai_chat nodes"
    assert claws.description == "Two gateways of the support team."
    assert {k: v.value for k, v in swarm.metadata.items()} == {
        "node_count": 3,
        "max_concurrency_per_node": 4,
        "max_concurrency": 12,
        "model": "demo-model",
    }
    assert claws.metadata["node_count"].value == 2


def test_the_sensor_observes_a_fleets_nodes_and_reports_only_changes(tmp_path: Path, instance: dg.DagsterInstance, store: StateStore) -> None:
    sensor = build_definitions(_fleets_only(tmp_path)).resolve_sensor_def("agent_load_sensor")
    now = dt.datetime.now(UTC)
    store.record_agent_load(
        [
            _view("swarm_node0", in_flight=3, limit=4, latency_ms=200.0, at=now),
            _view("swarm_node1", in_flight=0, limit=2, latency_ms=400.0, at=now),
            # a second batch process on node0: its requests count too
            _view("swarm_node0", in_flight=1, limit=4, latency_ms=None, at=now - dt.timedelta(seconds=1), holder="batch-run:2"),
        ]
    )

    first = sensor.evaluate_tick(sensor_context(instance))
    (observation,) = _observations(instance, SWARM)
    assert {name: _value(observation, name) for name in ("in_flight", "queued", "limit", "max_concurrency", "nodes_busy", "nodes_reporting", "latency_ms")} == {
        "in_flight": 4,
        "queued": 0,
        "limit": 4 + 2 + 4,  # node2 has no view yet: it counts at its max_concurrency
        "max_concurrency": 12,
        "nodes_busy": 1,
        "nodes_reporting": 2,
        "latency_ms": 300.0,  # the mean over the nodes with a latency
    }
    assert all(isinstance(observation.metadata[n], (dg.IntMetadataValue, dg.FloatMetadataValue)) for n in ("in_flight", "limit", "latency_ms"))
    table = observation.metadata["nodes"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["node", "in_flight", "limit", "max_concurrency", "latency_ms", "saturated", "updated_at"]
    rows = {row.data["node"]: row.data for row in table.records}
    assert list(rows) == list(NODES)
    assert rows["swarm_node0"] | {"updated_at": None} == {
        "node": "swarm_node0", "in_flight": 4, "limit": 4, "max_concurrency": 4, "latency_ms": 200.0, "saturated": False, "updated_at": None
    }
    assert rows["swarm_node0"]["updated_at"] == now.isoformat(timespec="seconds")
    assert rows["swarm_node2"] == {
        "node": "swarm_node2", "in_flight": None, "limit": 4, "max_concurrency": 4, "latency_ms": None, "saturated": False, "updated_at": None
    }
    assert _observations(instance, fleet_asset_key("claws")) == [], "no run called that fleet's nodes"

    # Same figures a second later (a batch run rewrites its views every second): nothing new.
    store.record_agent_load([_view("swarm_node1", in_flight=0, limit=2, latency_ms=400.0, at=now + dt.timedelta(seconds=1))])
    second = sensor.evaluate_tick(sensor_context(instance, first.cursor))
    assert len(_observations(instance, SWARM)) == 1

    # A node's figures changed: reported again.
    store.record_agent_load([_view("swarm_node2", in_flight=2, limit=3, latency_ms=600.0, at=now + dt.timedelta(seconds=2))])
    sensor.evaluate_tick(sensor_context(instance, second.cursor))
    newest, _ = _observations(instance, SWARM)
    assert (_value(newest, "in_flight"), _value(newest, "limit"), _value(newest, "nodes_busy"), _value(newest, "latency_ms")) == (6, 4 + 2 + 3, 2, 400.0)


def test_a_cursor_from_before_fleets_still_works(tmp_path: Path, instance: dg.DagsterInstance, store: StateStore) -> None:
    """Agents keep their figures from the old cursor (not reported again); fleets are new to it."""
    tasks = "tasks:\n  - {name: ping, owner: ops, agent: demo, prompt: 'ping', schedule: {every: 1h}}\n"
    directory = write_catalog(tmp_path / "catalog", "http://127.0.0.1:18904", tasks)
    (directory / "fleets.yaml").write_text(FLEETS_YAML)
    catalog = load_catalog(directory)
    assert catalog.ok, catalog.problems
    sensor = build_definitions(catalog).resolve_sensor_def("agent_load_sensor")
    now = dt.datetime.now(UTC)
    store.record_agent_load([_view("demo", 1, 4, 250.0, now, holder="run-a"), _view("claws_b", 2, 4, 900.0, now)])
    old_cursor = json.dumps({"demo": {"figures": [1, 0, 4, 250.0, 0], "saturated": False}})

    result = sensor.evaluate_tick(sensor_context(instance, old_cursor))

    assert _observations(instance, agent_asset_key("demo")) == []
    (fleet,) = _observations(instance, fleet_asset_key("claws"))
    assert (_value(fleet, "in_flight"), _value(fleet, "limit"), _value(fleet, "max_concurrency"), _value(fleet, "latency_ms")) == (2, 8, 8, 900.0)
    assert set(json.loads(result.cursor or "{}")) == {"demo", "fleets/claws"}


def _summary(node: str, in_flight: int) -> LoadSummary:
    return LoadSummary(
        agent=node, limit=4, max_limit=4, in_flight=in_flight, queued=0, oldest_wait_s=None, latency_ms=None, baseline_ms=None,
        skipped=0, last_skip_at=None, updated_at=dt.datetime(2026, 1, 1, tzinfo=UTC), saturated=False,
    )


def test_a_large_fleets_table_lists_its_busiest_nodes() -> None:
    nodes = {f"big_node{i:03d}": 4 for i in range(MAX_NODE_ROWS + 50)}
    loads = {"big_node149": _summary("big_node149", 3), "big_node120": _summary("big_node120", 0)}
    metadata = fleet_load_metadata(nodes, loads)
    listed = [row.data["node"] for row in metadata["nodes"].value.records]
    assert len(listed) == MAX_NODE_ROWS and listed == sorted(listed)
    assert {"big_node149", "big_node120"} <= set(listed), "the nodes with a view come before those without"
    assert metadata["nodes_not_listed"].value == 50
    assert metadata["limit"].value == 4 * (MAX_NODE_ROWS + 50) and metadata["in_flight"].value == 3
    assert "latency_ms" not in metadata, "no node has a latency yet"


def test_the_loads_of_a_fleet_past_sqlites_bound_values_are_read(store: StateStore) -> None:
    """40,000 nodes (SQLite binds at most 32,766 values in a statement): their views are read in
    chunks and still come newest first."""
    as_upstream_sqlite(store.engine)
    now = dt.datetime.now(dt.timezone.utc)
    nodes = [f"huge_node{i:05d}" for i in range(40_000)]
    store.record_agent_load([_view(nodes[i], in_flight=1, limit=4, latency_ms=10.0, at=now - dt.timedelta(seconds=i)) for i in (0, 20_000, 39_999)])
    loads = store.agent_loads(nodes, since=now - dt.timedelta(days=1))
    assert [load.agent for load in loads] == [nodes[0], nodes[20_000], nodes[39_999]]
    summaries = agent_loads(store, nodes, now)
    assert set(summaries) == {nodes[0], nodes[20_000], nodes[39_999]}


def _fleet_check(instance: dg.DagsterInstance, fleet: str) -> dg.AssetCheckEvaluation | None:
    record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(fleet_asset_key(fleet), NOT_SATURATED_CHECK))
    return None if record is None else record.event.dagster_event.event_specific_data  # type: ignore[union-attr]


def test_a_fleets_check_fails_while_a_node_is_saturated_and_names_it(tmp_path: Path, instance: dg.DagsterInstance, store: StateStore) -> None:
    sensor = build_definitions(_fleets_only(tmp_path)).resolve_sensor_def("agent_load_sensor")
    now = dt.datetime.now(UTC)
    store.record_agent_load([_view("swarm_node0", 2, 4, 300.0, now), _view("swarm_node1", 1, 4, 300.0, now)])
    cursor = sensor.evaluate_tick(sensor_context(instance)).cursor
    first = _fleet_check(instance, "swarm")
    assert first is not None and first.passed and "no node saturated (2 of 3 nodes called so far)" in first.description

    # node1's queue: an execution has waited past the saturation threshold for it.
    waited = SATURATED_WAIT_S + 5
    store.record_agent_load([_view("swarm_node1", 4, 4, 9000.0, now + dt.timedelta(seconds=1), queued=6, oldest_wait_s=waited)])
    cursor = sensor.evaluate_tick(sensor_context(instance, cursor)).cursor
    failing = _fleet_check(instance, "swarm")
    assert failing is not None and not failing.passed and failing.severity == dg.AssetCheckSeverity.WARN
    assert failing.description.startswith("Saturated: 1 of 3 nodes. swarm_node1: 4 in flight at limit 4"), failing.description
    assert f"6 waiting (oldest {waited:.0f} s)" in failing.description
    assert failing.metadata["saturated_nodes"].value == "swarm_node1" and failing.metadata["nodes_saturated"].value == 1
    (observation, _) = _observations(instance, SWARM)
    rows = {row.data["node"]: row.data for row in observation.metadata["nodes"].value.records}
    assert rows["swarm_node1"]["saturated"] and not rows["swarm_node0"]["saturated"]

    # Still saturated at the next tick: no second evaluation.
    sensor_result = sensor.evaluate_tick(sensor_context(instance, cursor))
    history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(SWARM, NOT_SATURATED_CHECK), limit=10)
    assert len(history) == 2

    # The queue drained: the check passes again.
    store.record_agent_load([_view("swarm_node1", 1, 4, 800.0, now + dt.timedelta(seconds=2))])
    cursor = sensor.evaluate_tick(sensor_context(instance, sensor_result.cursor)).cursor
    recovered = _fleet_check(instance, "swarm")
    assert recovered is not None and recovered.passed, recovered

    # A batch keeps node0 busy at a limit its latency cut to 3 of 4 (its items always wait: the
    # cut limit is what says it cannot keep up).
    store.record_agent_load([_view("swarm_node0", 3, 3, 4000.0, now + dt.timedelta(seconds=3))])
    cursor = sensor.evaluate_tick(sensor_context(instance, cursor)).cursor
    held = _fleet_check(instance, "swarm")
    assert held is not None and not held.passed
    assert held.description.startswith("Saturated: 1 of 3 nodes. swarm_node0 (held to 3 of 4 by its latency or errors): 3 in flight"), held.description
    # ...but not while measuring its baseline (a limit of 1 on purpose), nor with room left.
    probing = dataclasses.replace(_summary("p", 1), limit=1, measuring_baseline=True)
    assert not node_saturated(probing) and not node_saturated(dataclasses.replace(_summary("r", 2), limit=3))
    assert node_saturated(dataclasses.replace(_summary("h", 3), limit=3))


def test_executing_a_fleets_check_reads_its_nodes_now(tmp_path: Path, instance: dg.DagsterInstance, store: StateStore) -> None:
    """As from the UI: the check's own execution (a run) evaluates the selected fleet only."""
    defs = build_definitions(_fleets_only(tmp_path))
    key = dg.AssetCheckKey(SWARM, NOT_SATURATED_CHECK)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection={key})

    def evaluate() -> list[dg.AssetCheckEvaluation]:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        return [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]

    (fresh,) = evaluate()
    assert fresh.passed and fresh.description == "No run has called this fleet's nodes yet."
    now = dt.datetime.now(UTC)
    store.record_agent_load([_view("swarm_node2", 4, 2, 5000.0, now, queued=3, oldest_wait_s=SATURATED_WAIT_S)])
    (saturated,) = evaluate()
    assert saturated.asset_key == SWARM and not saturated.passed and "swarm_node2" in saturated.description
