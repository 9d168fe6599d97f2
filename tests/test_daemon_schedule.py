"""A due time planned by the real `dagster-daemon` (task_scheduler_sensor) produces a successful
run that called the agent at that time; a scheduled batch task gets one run over all its shards
from batch_trigger_sensor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.scheduling.timing import parse_due
from tests.conftest import PROJECT_ROOT, write_catalog

EVERY_MINUTE = """\
tasks:
  - name: tick
    owner: ops
    agent: claw
    schedule: "* * * * *"
    session: task
    prompt: "Status at {{ due_time.isoformat() }}"
  - name: audit
    owner: ops
    agent: demo
    items: {path: hosts.jsonl, id_column: host}
    shards: 2
    schedule: "* * * * *"
    prompt: "Audit {{ item.host }} as of {{ due_time.isoformat() }}"
"""
HOSTS = 20


@pytest.mark.daemon
@pytest.mark.parametrize("storage", ["sqlite"], indirect=True)
def test_daemon_schedule_tick_runs_the_task(tmp_path: Path, demo_agent, dagster_home: Path) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "hosts.jsonl").write_text("".join(f'{{"host": "h{i:02d}"}}\n' for i in range(HOSTS)))
    catalog = write_catalog(tmp_path / "catalog", demo_agent.url, EVERY_MINUTE)
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), AGENT_PIPELINES_CATALOG=str(catalog))
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "agent_pipelines.definitions"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run = _wait_for_run_that_fired(dagster_home, timeout_s=180)
        batch_run = _wait_for_run_that_fired(dagster_home, timeout_s=120, asset="audit")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
    assert run is not None, "no scheduled run finished in time:\n" + (tmp_path / "daemon.log").read_text()[-5000:]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/sensor_name"] == "task_scheduler_sensor"
    assert run.tags["agent_pipelines/trigger"] == "schedule"
    assert run.tags["agent_pipelines/task"] == "tick" and run.tags["agent_pipelines/tasks"] == "tick"
    assert run.job_name == "scheduled_tasks_job" and not run.asset_selection
    window_start = run.tags["agent_pipelines/window_start"]
    # a window run, or a replacement if the first one died
    assert run.tags["dagster/run_key"].startswith(f"window:{window_start}:0")

    sent = {r.headers["idempotency-key"]: r for r in demo_agent.requests() if r.path == "/v1/chat/completions"}
    request = sent[f"agent-pipelines:tick:schedule:{window_start}"]
    due = request.headers["idempotency-key"].split(":schedule:")[1]
    assert due == window_start, "a * * * * * task is due at the start of its minute"
    assert request.received_at >= parse_due(due).timestamp(), "never early"
    assert request.body["messages"][-1]["content"] == f"Status at {parse_due(due).isoformat()}"
    assert request.headers["x-openclaw-session-key"] == "agent-pipelines-tick"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("tick"))
        assert event is not None
        assert event.asset_materialization.metadata["trigger"].value == "schedule"
        assert "lateness_ms" in event.asset_materialization.metadata

    # The batch task: one run over both shards, started by its sensor for one due time.
    assert batch_run is not None, "no scheduled batch run finished in time:\n" + (tmp_path / "daemon.log").read_text()[-5000:]
    assert batch_run.status == dg.DagsterRunStatus.SUCCESS
    assert batch_run.tags["dagster/sensor_name"] == "batch_trigger_sensor"
    batch_due = batch_run.tags["agent_pipelines/due_time"]
    assert batch_run.tags["dagster/run_key"] == f"agent-pipelines:audit:schedule:{batch_due}"
    assert (batch_run.tags["dagster/asset_partition_range_start"], batch_run.tags["dagster/asset_partition_range_end"]) == ("shard-00", "shard-01")
    audited = [r for r in demo_agent.requests() if r.path == "/v1/chat/completions" and ":audit:item:" in r.headers["idempotency-key"]]
    assert sorted({r.headers["idempotency-key"] for r in audited}) == sorted(
        f"agent-pipelines:audit:item:h{i:02d}:schedule:{batch_due}" for i in range(HOSTS)
    )
    assert all(r.received_at >= parse_due(batch_due).timestamp() for r in audited), "never early"


def _wait_for_run_that_fired(home: Path, timeout_s: float, asset: str = "tick") -> dg.DagsterRun | None:
    """The first finished run that materialized `asset` (results appear as they are recorded,
    while the window run goes on to the end of its minute)."""
    deadline = time.time() + timeout_s
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.time() < deadline:
            for record in instance.fetch_materializations(dg.AssetKey(asset), limit=20).records:
                run = instance.get_run_by_id(record.run_id)
                if run is not None and run.is_finished:
                    return run
            time.sleep(1)
    return None
