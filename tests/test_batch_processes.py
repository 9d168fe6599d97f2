"""A batch run's shards spread over two processes (a fork per group of nodes): every item once,
the checks and progress of the child's shards reach the run like the parent's, the run's log
says which process carried which shards, and a child that fails fails only its own shards.
Real demo agents on 127.0.0.1, a real SQLite instance, a real fork."""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from agent_pipelines.batch.processes import group_by_node, process_count, run_in_processes
from agent_pipelines.batch.progress import ProgressBoard
from agent_pipelines.batch.runner import ShardSummary
from agent_pipelines.batch.triggers import batch_job_name
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread
from agent_pipelines.lifecycle.report import agent_rows
from agent_pipelines.scheduling.load import agent_loads
from agent_pipelines.store import StateStore
from tests.conftest import TEST_TOKEN

TASK = "triage"
ITEMS = 600
DEADLINE_S = 120


def test_process_count_pays_off_only_for_big_runs() -> None:
    assert process_count(1_000_000, groups=8, cpus=2) == 2
    assert process_count(30_000, groups=8, cpus=2) == 1, "15,000 items a process: not worth a fork"
    assert process_count(1_000_000, groups=1, cpus=2) == 1, "one node: its concurrency stays in one process"
    assert process_count(10, groups=4, cpus=2, wanted=3) == 3, "asked for explicitly"
    assert process_count(10, groups=2, cpus=8, wanted=4) == 2


def test_groups_keep_a_nodes_shards_together_and_balance() -> None:
    homes = {"s0": "a", "s1": "a", "s2": "b", "s3": "b", "s4": "c", "s5": "d"}
    groups = group_by_node(list(homes), homes.__getitem__, 2)
    assert sorted(len(g) for g in groups) == [3, 3]
    first, second = ({homes[k] for k in group} for group in groups)
    assert not first & second, "a node's shards in one group only"


def _summary(key: str, ok: int) -> ShardSummary:
    summary = ShardSummary(key=key, node="n")
    summary.items = summary.ok = ok
    return summary


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


def test_a_failed_child_fails_its_own_shards_only() -> None:
    def stream(keys: list[str]) -> list[ShardSummary]:
        if keys == ["broken"]:
            raise RuntimeError("the child's loop died")
        return [_summary(key, 5) for key in keys]

    log = Lines()
    board = ProgressBoard()
    summaries = run_in_processes(
        [["here"], ["there"], ["broken"]],
        stream=stream,
        prepare_child=lambda send: ProgressBoard(),
        log=log,
        parent_board=board,
        new_summary=lambda key: ShardSummary(key=key, node="n"),
    )
    by_key = {s.key: s for s in summaries}
    assert (by_key["here"].ok, by_key["there"].ok) == (5, 5), "the child's summaries come back whole"
    assert by_key["there"].error is None
    assert by_key["broken"].error == "RuntimeError: the child's loop died"
    assert any(level == "error" and "the child's loop died" in line and "Traceback" in line for level, line in log.lines)
    pids = {re.search(r"in process (\d+)", line).group(1) for _, line in log.lines if "in process" in line}
    assert len(pids) == 3 and str(os.getpid()) in pids


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    agents = [run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=80)) for _ in range(2)]
    yield agents
    for agent in agents:
        agent.stop()


def _catalog(directory: Path, urls: list[str]) -> Path:
    directory.mkdir()
    with (directory / "items.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([f"I{i:04d}", f"item {i}"] for i in range(ITEMS))
    nodes = "\n".join(f'      - {{name: node{i}, base_url: "{url}"}}' for i, url in enumerate(urls))
    (directory / "batch.yaml").write_text(
        f"""\
fleets:
  - name: pair
    kind: openai_chat
    model: demo-model
    auth_env: DEMO_AGENT_TOKEN
    max_concurrency: 4
    timeout: 5s
    nodes:
{nodes}
tasks:
  - name: {TASK}
    owner: support
    fleet: pair
    items: {{path: items.csv, id_column: id}}
    prompt: "Look at {{{{ item.text }}}}"
    checks: {{must_match: ["item [0-9]*0\\\\b"], min_pass_rate: 0.05}}
    shard_processes: 2
"""
    )
    return directory


def test_a_run_over_two_processes_accounts_for_every_item_once(tmp_path, instance, two_nodes) -> None:
    catalog = load_catalog(_catalog(tmp_path / "catalog", [a.url for a in two_nodes]))
    defs = build_definitions(catalog)
    outcome: dict[str, dg.ExecuteInProcessResult] = {}

    def backfill() -> None:
        outcome["result"] = defs.resolve_job_def(batch_job_name(TASK)).execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": "node0", "dagster/asset_partition_range_end": "node1"},
            raise_on_error=False,
        )

    thread = threading.Thread(target=backfill, daemon=True)
    thread.start()

    def observations() -> list[dg.AssetObservation]:
        return [r.asset_observation for r in instance.fetch_observations(dg.AssetKey(TASK), limit=500).records]

    store = StateStore.for_instance(instance)
    nodes = ["pair_node0", "pair_node1"]
    busy: dict[str, str] = {}  # node -> the holder that had requests in flight to it
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and thread.is_alive():
        busy.update({view.agent: view.holder for view in store.agent_loads(nodes) if view.in_flight > 0})
        if {o.partition for o in observations() if o.metadata["state"].value == "running"} == {"node0", "node1"} and len(busy) == 2:
            break
        time.sleep(0.1)
    running = {o.partition for o in observations() if o.metadata["state"].value == "running"}
    assert running == {"node0", "node1"}, f"both shards' progress seen while the run went on: {running}"
    thread.join(DEADLINE_S)
    result = outcome["result"]
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]

    # Each process shared its node's load as a dispatcher run does: seen in flight while the run
    # went on, under the run's id and the process's, and nothing in flight once it ended.
    assert sorted(busy) == nodes and len(set(busy.values())) == 2, busy
    assert all(holder.startswith(f"{result.run_id}:") for holder in busy.values()), busy
    final = {view.holder: view for view in store.agent_loads(nodes)}
    assert {final[holder].in_flight for holder in busy.values()} == {0}
    summary = agent_loads(store, nodes, dt.datetime.now(dt.timezone.utc))
    assert {name: (s.in_flight, s.max_limit) for name, s in summary.items()} == {name: (0, 4) for name in nodes}
    assert all(s.latency_ms and s.latency_ms >= 80 for s in summary.values()), "the nodes' latency as the batch saw it"
    header, *rows = agent_rows(catalog, store, dt.datetime.now(dt.timezone.utc))
    shown = {row[0]: dict(zip(header, row)) for row in rows}
    assert {name: (shown[name]["lifecycle"], shown[name]["limit"].split("/")[1], shown[name]["in flight"]) for name in nodes} == {
        name: ("node of pair", "4", "0") for name in nodes
    }, "`agent list` shows the fleet's nodes with the load the batch left"

    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    carried = {m.split(":")[0]: re.search(r"in process (\d+)", m).group(1) for m in messages if re.search(r"in process \d+", m)}
    assert set(carried) == {"shards node0", "shards node1"} and len(set(carried.values())) == 2, carried

    latest: dict[str, dg.AssetMaterialization] = {}
    for record in reversed(instance.fetch_materializations(dg.AssetKey(TASK), limit=10).records):
        latest[record.asset_materialization.partition] = record.asset_materialization
    assert set(latest) == {"node0", "node1"}
    results = pd.concat([pd.read_parquet(m.metadata["path"].value) for m in latest.values()])
    assert len(results) == ITEMS and results["item_id"].is_unique and (results["status"] == "ok").all()
    assert sum(m.metadata["ok"].value for m in latest.values()) == ITEMS
    assert all(m.metadata["latency_p50_ms"].value > 0 for m in latest.values()), "the child's latencies came back"
    evaluations = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evaluations) == 2, "one check result per shard, the child's included"
    for event in evaluations:
        evaluation = event.event_specific_data
        assert evaluation.passed, evaluation.metadata
        assert evaluation.metadata["pass_rate"].value == pytest.approx(0.1, abs=0.02)
    observed = {o.partition: o for o in reversed(observations())}
    assert {k: (o.metadata["state"].value, o.metadata["done"].value) for k, o in observed.items()} == {
        "node0": ("finished", latest["node0"].metadata["items"].value),
        "node1": ("finished", latest["node1"].metadata["items"].value),
    }


def test_a_down_nodes_shards_go_to_a_node_of_the_same_process_first(tmp_path: Path) -> None:
    from agent_pipelines.batch.runner import BatchRunner
    from assets.batch import nodes_for

    catalog = load_catalog(_catalog(tmp_path / "catalog", [f"http://127.0.0.1:{9 + i}" for i in range(4)]))
    assert catalog.ok, catalog.problems
    task = catalog.tasks[TASK]
    runner = BatchRunner(task=task, nodes=nodes_for(catalog, task), shard_keys=["node0", "node1", "node2", "node3"], source=list, open_writer=None, trigger=None)
    node0, node1, node2, node3 = runner.nodes
    node0.down_reason = "connection refused"
    assert runner.next_up(node0) is node1, "one process: the next node round the ring"
    runner._nodes_here = {"node0", "node2", "node3"}  # this process streams node0's, node2's and node3's shards
    assert runner.next_up(node0) is node2, "node1's concurrency belongs to another process"
    node2.down_reason = node3.down_reason = "connection refused"
    assert runner.next_up(node0) is node1, "with none of its own left, any healthy node"
