"""Batch tasks over a fleet of real agent servers on 127.0.0.1: one dies mid-run, one answers
429, one is slow. Every item is accounted for exactly once, a failed shard is re-run alone,
results are readable with pandas and the metadata adds up."""

from __future__ import annotations

import csv
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.demo_agent import DemoAgentConfig, RunningDemoAgent, run_in_thread
from agent_pipelines.composition import build_definitions
from tests.conftest import TEST_TOKEN

ITEMS = 2000


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    configs = [
        DemoAgentConfig(token=TEST_TOKEN, latency_ms=5),  # steady
        DemoAgentConfig(token=TEST_TOKEN, latency_ms=120, jitter_ms=40),  # slow
        DemoAgentConfig(token=TEST_TOKEN, latency_ms=5),  # answers 429 now and then
        DemoAgentConfig(token=TEST_TOKEN, latency_ms=5),  # dies mid-run
    ]
    agents = [run_in_thread(c) for c in configs]
    yield agents
    for agent in agents:
        agent.stop()


def _write_items(path: Path, count: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "subject", "region"])
        for i in range(count):
            writer.writerow([f"T{i:05d}", f"printer jam #{i}", ["eu", "us", "apac"][i % 3]])


def _catalog(tmp_path: Path, agents: list[RunningDemoAgent], task_extra: str = "", fleet_extra: str = "") -> Path:
    directory = tmp_path / "catalog"
    directory.mkdir(exist_ok=True)
    _write_items(directory / "tickets.csv", ITEMS)
    nodes = "\n".join(f"      - {{name: node{i}, base_url: \"{a.url}\"}}" for i, a in enumerate(agents))
    (directory / "batch.yaml").write_text(
        textwrap.dedent(
            """\
            fleets:
              - name: swarm
                kind: openai_chat
                model: demo-model
                auth_env: DEMO_AGENT_TOKEN
                max_concurrency: 8
                timeout: 5s
                health_path: /health
            {fleet_extra}
                nodes:
            {nodes}
            tasks:
              - name: score_tickets
                owner: support
                fleet: swarm
                items: {{path: tickets.csv, id_column: ticket_id}}
                prompt: "Score ticket {{{{ item.ticket_id }}}} ({{{{ item.region }}}}): {{{{ item.subject }}}}"
                idempotent: true
                retries: {{count: 3, delay: 100ms, backoff: constant, jitter: none}}
                max_failure_ratio: 0.02
            {task_extra}
            """
        ).format(nodes=textwrap.indent(nodes, ""), task_extra=task_extra, fleet_extra=fleet_extra)
    )
    return directory


def _backfill(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str]):
    job = defs.resolve_job_def("score_tickets_batch_job")
    return job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        raise_on_error=False,
    )


def _shard_materializations(instance: dg.DagsterInstance) -> dict[str, dg.AssetMaterialization]:
    records = instance.fetch_materializations(dg.AssetKey("score_tickets"), limit=100).records
    latest: dict[str, dg.AssetMaterialization] = {}
    for record in reversed(records):  # oldest first, newest wins
        latest[record.asset_materialization.partition] = record.asset_materialization
    return latest


def test_fleet_backfill_accounts_for_every_item_once(tmp_path, fleet, instance) -> None:
    steady, slow, limited, doomed = fleet
    limited.push_faults([{"status": 429, "retry_after": 0.3}, {}, {}, {}] * 10)

    def kill_after_some_requests() -> None:
        while doomed.state.requests_total < 60:
            time.sleep(0.01)
        doomed.stop()

    killer = threading.Thread(target=kill_after_some_requests, daemon=True)
    killer.start()
    defs = build_definitions(load_catalog(_catalog(tmp_path, fleet)))
    result = _backfill(defs, instance, ["node0", "node1", "node2", "node3"])
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]

    shards = _shard_materializations(instance)
    assert set(shards) == {"node0", "node1", "node2", "node3"}
    frames = [pd.read_parquet(m.metadata["path"].value) for m in shards.values()]
    results = pd.concat(frames)
    assert len(results) == ITEMS and results["item_id"].is_unique, "every item exactly once"
    assert set(results["item_id"]) == {f"T{i:05d}" for i in range(ITEMS)}
    assert (results["status"] == "ok").all()
    assert results["output"].str.contains("Score ticket").all()
    assert set(results.columns) >= {"item_id", "item", "shard", "node", "status", "output", "error", "latency_ms", "tokens_in", "tokens_out", "attempts"}

    moved = shards["node3"].metadata["node_moves"].value
    assert moved and moved[0].startswith("node3 -> "), "the dead node's shard says where it went"
    assert set(results.loc[results["shard"] == "node3", "node"]) - {"node3"}, "its items finished elsewhere"

    total = sum(m.metadata["items"].value for m in shards.values())
    assert total == ITEMS
    assert sum(m.metadata["ok"].value for m in shards.values()) == ITEMS
    for name, materialization in shards.items():
        metadata = materialization.metadata
        assert metadata["latency_p50_ms"].value <= metadata["latency_p95_ms"].value
        assert metadata["tokens_in"].value > 0 and metadata["failed"].value == 0
    assert shards["node1"].metadata["latency_p50_ms"].value > shards["node0"].metadata["latency_p50_ms"].value
    assert shards["node2"].metadata["retried"].value >= 1, "429s were retried"
    limited_times = [r.received_at for r in limited.requests()]
    assert max(b - a for a, b in zip(limited_times, limited_times[1:])) >= 0.25, "Retry-After was honoured"

    combined = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("score_tickets_all")]
    )
    assert combined.success
    (record,) = instance.fetch_materializations(dg.AssetKey("score_tickets_all"), limit=1).records
    everything = pd.read_parquet(record.asset_materialization.metadata["path"].value)
    assert len(everything) == ITEMS and everything["item_id"].is_unique


def test_a_failed_shard_fails_alone_and_reruns_alone(tmp_path, fleet, instance) -> None:
    steady, slow, limited, broken = fleet
    broken.push_faults([{"status": 400, "body": {"error": "rejected"}}] * ITEMS)
    defs = build_definitions(load_catalog(_catalog(tmp_path, fleet)))
    first = _backfill(defs, instance, ["node0", "node1", "node2", "node3"])
    assert not first.success
    failure = next(e for e in first.all_events if e.event_type_value == "STEP_FAILURE")
    assert "node3" in failure.message or "node3" in str(failure.event_specific_data.error.message)
    assert instance.get_materialized_partitions(dg.AssetKey("score_tickets")) == {"node0", "node1", "node2"}

    broken.reset()  # the agent is fixed
    before = {k: m.metadata["path"].value for k, m in _shard_materializations(instance).items()}
    again = defs.resolve_job_def("score_tickets_batch_job").execute_in_process(
        instance=instance, partition_key="node3", raise_on_error=False
    )
    assert again.success
    shards = _shard_materializations(instance)
    assert set(shards) == {"node0", "node1", "node2", "node3"}
    assert {k: shards[k].metadata["path"].value for k in before} == before, "the others were not re-run"
    rerun = pd.read_parquet(shards["node3"].metadata["path"].value)
    assert (rerun["status"] == "ok").all() and rerun["item_id"].is_unique


def test_shards_by_column_are_dynamic_partitions(tmp_path, fleet, instance) -> None:
    steady = fleet[0]
    directory = tmp_path / "catalog"
    directory.mkdir()
    _write_items(directory / "tickets.csv", 300)
    (directory / "c.yaml").write_text(
        textwrap.dedent(
            f"""\
            agents:
              - {{name: solo, kind: openai_chat, model: m, base_url: "{steady.url}", auth_env: DEMO_AGENT_TOKEN, max_concurrency: 16}}
            tasks:
              - name: score_tickets
                owner: support
                agent: solo
                items: {{path: tickets.csv, id_column: ticket_id}}
                shard_by: region
                prompt: "{{{{ shard }}}}: {{{{ item.subject }}}}"
            """
        )
    )
    defs = build_definitions(load_catalog(directory))
    sensor = defs.resolve_sensor_def("batch_shards_sensor")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    (request,) = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == ["apac", "eu", "us"]
    instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert again.dynamic_partitions_requests == []
    run = _backfill(defs, instance, ["apac", "eu", "us"])
    assert run.success
    shards = _shard_materializations(instance)
    eu = pd.read_parquet(shards["eu"].metadata["path"].value)
    assert len(eu) == 100 and (eu["output"].str.startswith("## eu:")).all()
