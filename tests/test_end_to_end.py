"""End to end through a real Dagster instance, as a user runs it: `dagster job execute` in its
own process against the code location, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml

from agent_pipelines.instance import POSTGRES_URL_ENV
from agent_pipelines.store import sqlalchemy_url
from tests.conftest import PROJECT_ROOT, write_catalog

WORKFLOW = """\
tasks:
  - name: gather
    owner: ops
    agent: demo
    prompt: "List the open incidents for {{ environment }}."
    variables: {environment: staging}
  - name: brief
    owner: oncall
    agent: hermes
    depends_on: [gather]
    session: task
    prompt: "Summarise for the on-call engineer: {{ upstream.gather }}"
"""


def _dagster(*args: str, home: Path, catalog: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DAGSTER_HOME=str(home), AGENT_PIPELINES_CATALOG=str(catalog))
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "dagster"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _latest(instance: dg.DagsterInstance, key: str) -> dg.EventLogEntry:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} was not materialized"
    return event


def test_workflow_job_through_a_real_instance(tmp_path, demo_agent, dagster_home, storage) -> None:
    catalog = write_catalog(tmp_path / "catalog", demo_agent.url, WORKFLOW)
    config = tmp_path / "run_config.yaml"
    config.write_text(
        yaml.safe_dump({"ops": {"gather": {"config": {"gather": {"variables": {"environment": "production"}}}}}})
    )
    result = _dagster(
        "job", "execute", "-m", "agent_pipelines.definitions", "-j", "brief_workflow_job", "-c", str(config),
        home=dagster_home, catalog=catalog,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        if storage == "postgres":
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["agent_pipelines/workflow"] == "brief"
        assert run.tags["agent_pipelines/trigger"] == "manual"

        gather = _latest(instance, "gather")
        brief = _latest(instance, "brief")
        gather_meta = {k: v.value for k, v in gather.asset_materialization.metadata.items()}
        brief_meta = {k: v.value for k, v in brief.asset_materialization.metadata.items()}
        for metadata in (gather_meta, brief_meta):
            for field in ("output", "prompt", "prompt_version", "agent", "model", "latency_ms",
                          "tokens_in", "tokens_out", "session_id", "attempts"):
                assert field in metadata, field
        assert "List the open incidents for production." in gather_meta["prompt"]
        assert brief_meta["model"] == "hermes-agent"
        assert brief_meta["session_id"] not in ("", "none")
        assert brief.asset_materialization.tags["agent_pipelines/owner"] == "oncall"

        # Lineage: the downstream materialization points at the upstream one it consumed ...
        pointer = brief.asset_materialization.tags["dagster/input_event_pointer/gather"]
        gather_record = instance.fetch_materializations(dg.AssetKey("gather"), limit=1).records[0]
        assert int(pointer) == gather_record.storage_id
        # ... and the downstream prompt carried the upstream output.
        assert demo_agent.requests()[1].body["messages"][-1]["content"] == (
            f"Summarise for the on-call engineer: {gather_meta['output']}"
        )

    # agent_pipelines' own tables live beside Dagster's storage.
    url = os.environ[POSTGRES_URL_ENV] if storage == "postgres" else f"sqlite:///{dagster_home / 'agent_pipelines.db'}"
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert {"agent_pipelines_executions", "agent_pipelines_task_sessions", "agent_pipelines_alembic_version"} <= tables
        if storage == "postgres":
            assert "runs" in tables and "alembic_version" in tables  # Dagster's, untouched
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT task, status, attempts FROM agent_pipelines_executions ORDER BY task")).all()
        assert [tuple(r) for r in rows] == [("brief", "succeeded", 1), ("gather", "succeeded", 1)]
    finally:
        engine.dispose()


def test_failed_task_run_is_recorded_as_failed(tmp_path, demo_agent, dagster_home, storage) -> None:
    catalog = write_catalog(
        tmp_path / "catalog",
        demo_agent.url,
        "tasks:\n  - {name: flaky, owner: ops, agent: demo, prompt: hi, retries: {count: 0}}\n",
    )
    demo_agent.push_faults([{"status": 400, "body": {"error": "bad request"}}])
    result = _dagster(
        "job", "execute", "-m", "agent_pipelines.definitions", "-j", "agent_tasks_job",
        home=dagster_home, catalog=catalog,
    )
    assert result.returncode != 0
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        failures = [
            e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
        ]
        assert "client_error (HTTP 400)" in failures[0].dagster_event.event_specific_data.error.message
