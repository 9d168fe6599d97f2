"""A batch prompt improves from its history like a single task's, with real servers on 127.0.0.1:
the demo agent answers JSON only when the prompt asks for it, the demo tuner proposes exactly that
edit. The active prompt fails a must_match check for most items; the tuner proposes a candidate
from the failing samples; the next run sends the canary share of items with it; its pass rate is
higher and it is promoted; the run after that sends every item with it."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pandas as pd

from agent_pipelines.batch.triggers import batch_job_name
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import JSON_INSTRUCTION
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.prompts.tuning import pass_rate
from agent_pipelines.store import StateStore
from assets.prompts import history_frame
from sensors.prompt_quality import tuning_requests
from tests.conftest import write_catalog

TASK = "summarise_tickets"
ITEMS = 200
SHARDS = ["shard-00", "shard-01"]

TASKS = f"""\
tasks:
  - name: {TASK}
    owner: support
    agent: demo
    items: {{path: tickets.csv, id_column: ticket_id}}
    shards: 2
    prompt: "Summarise ticket {{{{ item.ticket_id }}}}: {{{{ item.subject }}}}"
    checks:
      must_match: ['"summary"']
    tuning:
      tuner: tuner
      min_pass_rate: 0.9
      window: 100
      canary_share: 0.3
      min_runs: 20
      margin: 0.2
"""
EXTRA_AGENTS = '- {name: tuner, kind: openai_chat, model: tuner-model, base_url: "URL", auth_env: DEMO_AGENT_TOKEN}\n'


class BatchLoop:
    def __init__(self, tmp_path: Path, demo_agent, instance: dg.DagsterInstance) -> None:
        directory = tmp_path / "catalog"
        directory.mkdir()
        with (directory / "tickets.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ticket_id", "subject"])
            for i in range(ITEMS):  # one in ten subjects happens to ask for JSON: those pass
                writer.writerow([f"T{i:04d}", f"printer jam #{i}" + (" (json welcome)" if i % 10 == 0 else "")])
        self.catalog = load_catalog(write_catalog(directory, demo_agent.url, TASKS, EXTRA_AGENTS.replace("URL", demo_agent.url)))
        assert self.catalog.ok, self.catalog.problems
        self.defs = build_definitions(self.catalog)
        self.instance = instance
        self.registry = PromptRegistry(StateStore.for_instance(instance))
        self.registry.sync_catalog(self.catalog)

    def run_batch(self) -> tuple[pd.DataFrame, dict[str, dg.AssetMaterialization]]:
        result = self.defs.resolve_job_def(batch_job_name(TASK)).execute_in_process(
            instance=self.instance,
            tags={"dagster/asset_partition_range_start": SHARDS[0], "dagster/asset_partition_range_end": SHARDS[-1]},
        )
        assert result.success
        materializations = {
            e.event_specific_data.materialization.partition: e.event_specific_data.materialization
            for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
        }
        rows = pd.concat(pd.read_parquet(m.metadata["path"].value) for m in materializations.values())
        assert len(rows) == ITEMS
        return rows, materializations

    def tune(self) -> dict:
        result = self.defs.resolve_job_def("prompt_tuning_job").execute_in_process(instance=self.instance)
        assert result.success
        return self.instance.fetch_materializations(dg.AssetKey("prompt_tuning"), limit=1).records[0].asset_materialization.metadata


def test_a_batch_prompt_improves_from_its_history(tmp_path, demo_agent, instance) -> None:
    loop = BatchLoop(tmp_path, demo_agent, instance)
    v1 = loop.catalog.prompt_versions[TASK]

    rows, _ = loop.run_batch()
    assert (rows["prompt_version"] == v1).all()
    assert rows["checks_passed"].mean() == 0.1
    history = loop.registry.executions_by_version(TASK, limit=100)
    (first,) = history[v1]
    assert (first["items"], first["passed_items"], first["failed"]) == (ITEMS, 20, {"must_match": 180}), "one aggregate per run and version"
    assert pass_rate(history[v1]) == 0.1
    (request,) = tuning_requests(loop.catalog, loop.registry)
    assert request.run_config["ops"]["prompt_tuning"]["config"]["tasks"] == [TASK], "the quality sensor reacts to a batch"

    decisions = loop.tune()
    assert decisions["proposed"].value == [TASK]
    candidate = loop.registry.candidate(TASK)
    assert candidate is not None and candidate.parent_version == v1 and JSON_INSTRUCTION in candidate.prompt
    assert "{{ item.ticket_id }}" in candidate.prompt, "a batch prompt keeps its item variables"
    failing = candidate.motivation["failing_executions"]
    assert failing and all(":item:" in key for key in failing), "lineage to the failing items"
    assert candidate.motivation["failing_runs"] == [first["run_id"]]
    tuner_request = next(r for r in demo_agent.requests() if r.body.get("model") == "tuner-model")
    assert "## Summarise ticket" in tuner_request.body["messages"][-1]["content"], "the tuner saw failing outputs"

    # The canary: a share of the items goes out with the candidate, the rest with the active one.
    rows, materializations = loop.run_batch()
    canary = rows["prompt_version"] == candidate.version
    assert set(rows["prompt_version"]) == {v1, candidate.version}
    assert 0.15 < canary.mean() < 0.45, canary.mean()
    assert rows.loc[canary, "checks_passed"].all(), "the candidate passes"
    assert rows.loc[~canary, "checks_passed"].mean() < 0.2
    sent = [r.body["messages"][-1]["content"] for r in demo_agent.requests() if r.body.get("model") == "demo-model"][-ITEMS:]
    assert sum(JSON_INSTRUCTION in prompt for prompt in sent) == int(canary.sum())
    roles = {r.data["role"] for m in materializations.values() for r in m.metadata["prompt_versions"].value.records}
    assert roles == {"active", "canary"}
    check = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(TASK), "must_match")).event.asset_check_evaluation
    by_version = {r.data["prompt_version"]: r.data for r in check.metadata["by_prompt_version"].value.records}
    assert by_version[candidate.version]["pass_rate"] == 1.0 and by_version[candidate.version]["canary"] is True

    decisions = loop.tune()
    assert decisions["promoted"].value == [TASK]
    assert loop.registry.active(TASK).version == candidate.version

    # No reload: the next run sends every item with the promoted prompt, and every check passes.
    rows, materializations = loop.run_batch()
    assert (rows["prompt_version"] == candidate.version).all() and rows["checks_passed"].all()
    for materialization in materializations.values():
        assert materialization.metadata["prompt_version"].value == candidate.version
        assert materialization.tags["dagster/code_version"] == v1, "a tuned version is not a stale output"
        assert materialization.metadata["check_pass_rate"].value == 1.0
    check = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(TASK), "must_match")).event.asset_check_evaluation
    assert check.passed

    frame = history_frame(loop.catalog, loop.registry.store).set_index("version")
    assert frame.loc[v1, "executions"] > ITEMS and frame.loc[v1, "pass_rate"] < 0.2
    assert frame.loc[candidate.version, "pass_rate"] == 1.0 and frame.loc[candidate.version, "pass_rate_must_match"] == 1.0
    loop.registry.rollback(TASK)
    assert loop.registry.active(TASK).version == v1, "the catalog version was registered: rollback works"
