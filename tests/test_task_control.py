"""Pause, resume and run-now from the UI's `task_control_job` and from the CLI; one-shot tasks
show as done once fired."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.instance import instance_yaml
from agent_pipelines.store import Claim, Settlement, StateStore, status
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.scheduling.triggers import Trigger

CATALOG = """\
agents:
  - {name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}
tasks:
  - {name: digest, owner: x, agent: a, prompt: "about {{ topic }}", variables: {topic: ai}, schedule: "0 9 * * *"}
  - {name: launch, owner: x, agent: a, prompt: go, schedule: {at: "2026-12-01T09:00:00+08:00"}}
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "c.yaml").write_text(textwrap.dedent(CATALOG))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AGENT_PIPELINES_CATALOG", str(tmp_path / "catalog"))
    return tmp_path / "catalog", home


def _control(defs: dg.Definitions, instance: dg.DagsterInstance, **config):
    return defs.resolve_job_def("task_control_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"apply_task_action": {"config": config}}},
        raise_on_error=False,
    )


def test_control_job_pauses_resumes_and_requests_runs(setup) -> None:
    catalog_path, home = setup
    defs = build_definitions(load_catalog(catalog_path))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        store = StateStore.for_instance(instance)
        assert _control(defs, instance, task="digest", action="pause", reason="vendor outage").success
        assert store.paused_tasks() == {"digest"}
        assert store.task_states()["digest"].reason == "vendor outage"
        assert _control(defs, instance, task="digest", action="resume").success
        assert store.paused_tasks() == set()
        assert _control(defs, instance, task="digest", action="run_now", variables={"topic": "chips"}).success
        (request,) = store.pending_run_requests()
        assert request.task == "digest" and request.variables == {"variables": {"topic": "chips"}}
        bad = _control(defs, instance, task="nope", action="pause")
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert "unknown task 'nope'" in failure.event_specific_data.error.message
        wrong_var = _control(defs, instance, task="digest", action="run_now", variables={"topc": 1})
        assert not wrong_var.success


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_pipelines.cli", *args], capture_output=True, text=True, env=os.environ.copy(), check=False
    )


def test_cli_task_commands(setup) -> None:
    catalog_path, home = setup
    paused = _cli("task", "pause", "digest", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    assert "paused digest" in paused.stdout
    listing = _cli("task", "list")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith("digest"))
    assert "paused" in line and "cron `0 9 * * *` (UTC)" in line
    run_now = _cli("task", "run-now", "digest", "--var", "topic=robots")
    assert run_now.returncode == 0 and "run-now request" in run_now.stdout
    unknown = _cli("task", "pause", "nope")
    assert unknown.returncode != 0 and "unknown task 'nope'" in unknown.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        store = StateStore.for_instance(instance)
        assert store.paused_tasks() == {"digest"}
        assert store.pending_run_requests()[0].variables == {"variables": {"topic": "robots"}}


def test_one_shot_task_shows_done_once_fired(setup) -> None:
    catalog_path, home = setup
    at = parse_due("2026-12-01T01:00:00Z")
    key = Trigger.scheduled(at).idempotency_key("launch")
    assert "active" in next(line for line in _cli("task", "list").stdout.splitlines() if line.startswith("launch"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        store = StateStore.for_instance(instance)
        store.claim([Claim(key, "launch", "a", "r", "schedule", at, "v")])
        store.start_attempts([key], "r", at)
        store.settle([Settlement(key, "launch", status.SUCCEEDED, "r", outcome="ok")])
    line = next(line for line in _cli("task", "list").stdout.splitlines() if line.startswith("launch"))
    assert "once at 2026-12-01T09:00:00+08:00" in line and " done " in f" {line} "
