"""Checks of batch tasks with real demo agents on 127.0.0.1: every answer is checked, the result
rows say how it went, and each shard reports its own asset check evaluations (pass rate, counts,
failing samples) on a real Dagster instance; the judge's concurrency is bounded; a check run
alone judges the stored results again without calling any agent."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from agent_pipelines.batch.triggers import batch_job_name
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread
from tests.conftest import TEST_TOKEN, write_catalog

TASK = "score_tickets"
REGIONS = ("eu", "us", "apac")


def _items(directory: Path, count: int, json_every: int | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "tickets.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "subject", "region"])
        for i in range(count):
            asks_json = json_every is not None and i % json_every == 0
            writer.writerow([f"T{i:04d}", f"printer jam #{i}" + (" (answer in json)" if asks_json else ""), REGIONS[i % 3]])


def _catalog(tmp_path: Path, url: str, checks: str, extra_agents: str = "", count: int = 300, json_every: int | None = None) -> Path:
    directory = tmp_path / "catalog"
    _items(directory, count, json_every)
    tasks = f"""\
tasks:
  - name: {TASK}
    owner: support
    agent: demo
    items: {{path: tickets.csv, id_column: ticket_id}}
    shards: 3
    prompt: "Score ticket {{{{ item.ticket_id }}}} ({{{{ item.region }}}}): {{{{ item.subject }}}}"
    checks:
{textwrap.indent(textwrap.dedent(checks), "      ")}
"""
    return write_catalog(directory, url, tasks, extra_agents)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str]) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(batch_job_name(TASK)).execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        raise_on_error=False,
    )


def _materializations(instance: dg.DagsterInstance) -> dict[str, dg.EventLogRecord]:
    latest: dict[str, dg.EventLogRecord] = {}
    for record in reversed(instance.fetch_materializations(dg.AssetKey(TASK), limit=100).records):
        latest[record.asset_materialization.partition] = record
    return latest


def _evaluations(instance: dg.DagsterInstance, check: str) -> dict[str, dg.AssetCheckEvaluation]:
    """The latest evaluation of `check` per shard partition."""
    key = dg.AssetCheckKey(dg.AssetKey(TASK), check)
    latest: dict[str, dg.AssetCheckEvaluation] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=100):
        evaluation = record.event.asset_check_evaluation
        latest.setdefault(evaluation.partition, evaluation)
    return latest


def test_every_answer_is_checked_and_each_shard_reports_its_checks(tmp_path, demo_agent, instance) -> None:
    checks = """\
        must_match: ["\\\\(eu\\\\)"]
        must_not_match: ["apac"]
        min_pass_rate: 0.5
    """
    catalog = load_catalog(_catalog(tmp_path, demo_agent.url, checks))
    assert catalog.ok, catalog.problems
    defs = build_definitions(catalog)
    graph = defs.resolve_asset_graph()
    assert {k.name for k in graph.asset_check_keys if k.asset_key == dg.AssetKey(TASK)} == {"must_match", "must_not_match"}

    shards = ["shard-00", "shard-01", "shard-02"]
    result = _run(defs, instance, shards)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]

    records = _materializations(instance)
    assert set(records) == set(shards)
    version = catalog.prompt_versions[TASK]
    must_match, must_not_match = _evaluations(instance, "must_match"), _evaluations(instance, "must_not_match")
    assert set(must_match) == set(must_not_match) == set(shards), "one evaluation per shard partition"
    for shard, record in records.items():
        metadata = record.asset_materialization.metadata
        rows = pd.read_parquet(metadata["path"].value)
        eu = rows["item"].map(lambda item: json.loads(item)["region"] == "eu")
        # Every answered item is checked; a failed check leaves it ok (it got an answer).
        assert (rows["status"] == "ok").all() and (rows["prompt_version"] == version).all()
        assert rows["checks_passed"].tolist() == eu.tolist()
        failures = rows["check_failures"].map(lambda text: sorted(json.loads(text)) if isinstance(text, str) else [])
        regions = rows["item"].map(lambda item: json.loads(item)["region"])
        assert failures[regions == "us"].map(lambda f: f == ["must_match"]).all()
        assert failures[regions == "apac"].map(lambda f: f == ["must_match", "must_not_match"]).all()
        assert metadata["checked"].value == len(rows) and metadata["failed"].value == 0
        assert metadata["failed_checks"].value == int((~eu).sum())
        assert metadata["check_pass_rate"].value == pytest.approx(eu.mean(), abs=1e-4)
        assert metadata["latency_p50_ms"].value <= metadata["latency_p95_ms"].value <= metadata["latency_p99_ms"].value
        assert sum(r.data["items"] for r in metadata["latency_histogram"].value.records) == len(rows)
        (version_row,) = metadata["prompt_versions"].value.records
        assert version_row.data["prompt_version"] == version and version_row.data["role"] == "active"
        run_rows = metadata["run_shards"].value.records
        assert sorted(r.data["shard"] for r in run_rows) == shards, "the run's summary on every shard"
        assert sum(r.data["done"] for r in metadata["run_timeline"].value.records) == 300
        assert "items/s" in metadata["run_plot"].value

        failed = must_match[shard]
        assert failed.passed is False and failed.severity == dg.AssetCheckSeverity.WARN
        assert failed.metadata["failed"].value == int((~eu).sum()) and failed.metadata["checked"].value == len(rows)
        assert failed.metadata["pass_rate"].value == pytest.approx(eu.mean(), abs=1e-4) and eu.mean() < 0.5
        samples = [r.data for r in failed.metadata["failure_samples"].value.records]
        assert samples and all(s["item_id"] in set(rows.loc[~eu, "item_id"]) and "missing" in s["reason"] and s["output"].startswith("## Score ticket") for s in samples)
        assert "at least 50% must pass" in failed.description
        assert failed.target_materialization_data is not None and failed.target_materialization_data.storage_id == record.storage_id
        passed = must_not_match[shard]
        assert passed.passed is True and passed.metadata["pass_rate"].value >= 0.5
    info = instance.event_log_storage.get_asset_check_partition_info([dg.AssetCheckKey(dg.AssetKey(TASK), "must_match")])
    assert {i.partition_key for i in info} == set(shards) and all(i.is_current for i in info), "checks target the shards' latest materializations"


def test_the_judge_is_bounded_and_a_check_alone_rejudges_stored_results(tmp_path, demo_agent, instance, monkeypatch) -> None:
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=20, model="judge-model")) as judge:
        checks = """\
            json_schema: {type: object, required: [summary]}
            judge: {agent: judge, rubric: "Is the answer a JSON object?", pass_threshold: 0.5}
        """
        extra = f'- {{name: judge, kind: openai_chat, model: judge-model, base_url: "{judge.url}", auth_env: DEMO_AGENT_TOKEN, max_concurrency: 2}}\n'
        path = _catalog(tmp_path, demo_agent.url, checks, extra, count=60, json_every=3)
        defs = build_definitions(load_catalog(path))
        shards = ["shard-00", "shard-01", "shard-02"]
        assert _run(defs, instance, shards).success

        judged = [r for r in judge.requests() if r.path.endswith("/chat/completions")]
        assert len(judged) == 60, "one verdict per answered item"
        assert max(load for _at, load in judge.state.outstanding_log()) == 2, "the judge agent's max_concurrency holds (and was reached)"
        rows = pd.concat(pd.read_parquet(r.asset_materialization.metadata["path"].value) for r in _materializations(instance).values())
        asks_json = rows["item"].map(lambda item: "json" in json.loads(item)["subject"])
        assert rows["checks_passed"].tolist() == asks_json.tolist()
        assert rows.loc[~asks_json, "check_failures"].map(lambda text: sorted(json.loads(text))).map(lambda f: f == ["json_schema", "judge"]).all()

        before = len(judge.requests()) + len(demo_agent.requests())
        check = dg.AssetCheckKey(dg.AssetKey(TASK), "json_schema")
        alone = defs.resolve_job_def(batch_job_name(TASK)).get_subset(asset_selection=set(), asset_check_selection={check})
        result = alone.execute_in_process(instance=instance, partition_key="shard-01", raise_on_error=False)
        assert result.success
        assert len(judge.requests()) + len(demo_agent.requests()) == before, "no agent called"
        evaluation = _evaluations(instance, "json_schema")["shard-01"]
        assert evaluation.metadata["evaluated"].value.startswith("again")
        shard_rows = pd.read_parquet(_materializations(instance)["shard-01"].asset_materialization.metadata["path"].value)
        assert evaluation.metadata["checked"].value == len(shard_rows)
        assert evaluation.metadata["passed"].value == int(shard_rows["checks_passed"].sum())
        assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]


def test_checks_and_tuning_are_accepted_on_batch_tasks_and_min_pass_rate_only_there(tmp_path, demo_agent) -> None:
    batch = _catalog(tmp_path / "batch", demo_agent.url, 'must_match: ["x"]\nmin_pass_rate: 0.9\n')
    assert load_catalog(batch).ok
    regular = write_catalog(
        tmp_path / "regular",
        demo_agent.url,
        """\
        tasks:
          - name: digest
            owner: support
            agent: demo
            prompt: "Digest"
            checks: {must_match: ["x"], min_pass_rate: 0.9}
        """,
    )
    problems = [str(p) for p in load_catalog(regular).problems]
    assert any("min_pass_rate" in p and "batch tasks" in p for p in problems), problems
