"""The catalog -> Definitions mapping: assets, lineage, code versions, jobs, schedules, grouping."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.grouping import MAX_TASKS_PER_OP, find_workflows, group_tasks, op_of
from agent_pipelines.scheduling.scheduler import MANUAL_JOB as ALL_TASKS_JOB
from tests.conftest import sensor_context

EXAMPLE = Path(__file__).resolve().parents[1] / "catalog"
BROKEN = Path(__file__).parent / "catalogs" / "broken"


@pytest.fixture(scope="module")
def example_defs() -> dg.Definitions:
    return build_definitions(load_catalog(EXAMPLE))


def test_code_location_module_loads() -> None:
    from agent_pipelines import definitions

    repo = definitions.defs.get_repository_def()
    assert {s.name for s in repo.sensor_defs} == {
        "catalog_health_sensor",
        "task_scheduler_sensor",
        "event_trigger_sensor",
        "batch_results_sensor",
        "prompt_quality_sensor",
        "notification_sensor",
        "retention_sensor",
        "agent_load_sensor",
    }
    # Time triggers go through task_scheduler_sensor, not per-task schedules; the only schedule
    # is the hourly prompt tuning pass.
    assert [s.name for s in repo.schedule_defs] == ["prompt_tuning_schedule"]
    assert {j.name for j in repo.get_all_jobs()} >= {
        "agent_tasks_job",
        "scheduled_tasks_job",
        "catchup_tasks_job",
        "event_tasks_job",
        "incident_summary_workflow_job",
        "catalog_health_job",
        "task_control_job",
    }


def test_loading_the_code_location_touches_no_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Definitions are a pure function of the YAML: a DAGSTER_HOME that does not exist is fine."""
    import subprocess
    import sys

    home = tmp_path / "no_home"
    env = {"DAGSTER_HOME": str(home), "PATH": "/usr/bin:/bin"}
    code = "from agent_pipelines.definitions import defs; print(len(defs.resolve_asset_graph().get_all_asset_keys()))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert not home.exists()


def test_tasks_are_assets_with_prompt_versions_and_lineage(example_defs: dg.Definitions) -> None:
    catalog = load_catalog(EXAMPLE)
    graph = example_defs.resolve_asset_graph()
    for name, version in catalog.prompt_versions.items():
        node = graph.get(dg.AssetKey(name))
        assert node.code_version == version
        assert node.owners == [catalog.tasks[name].owner]
    summary = graph.get(dg.AssetKey("incident_summary"))
    assert summary.parent_keys == {dg.AssetKey("collect_incidents")}
    assert summary.group_name == "incident_summary"
    assert graph.get(dg.AssetKey("daily_digest")).group_name == "agent_tasks"
    spec_metadata = graph.get(dg.AssetKey("daily_digest")).metadata
    assert "prompt_template" in spec_metadata and "catalog_source" in spec_metadata


def test_workflow_job(example_defs: dg.Definitions) -> None:
    workflow_job = example_defs.resolve_job_def("incident_summary_workflow_job")
    assert {k.to_user_string() for k in workflow_job.asset_layer.selected_asset_keys} == {
        "collect_incidents",
        "incident_summary",
    }
    assert workflow_job.tags["agent_pipelines/workflow"] == "incident_summary"
    assert example_defs.resolve_job_def(ALL_TASKS_JOB)


def test_broken_catalog_still_loads_its_valid_tasks(tmp_path: Path) -> None:
    catalog = load_catalog(BROKEN)
    defs = build_definitions(catalog)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"fine", "agent_catalog", "prompt_history", "prompt_tuning"} | {f"agents/{a}" for a in catalog.agents}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("catalog_health_job").execute_in_process(instance=instance)
        evaluations = [
            e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
    assert len(evaluations) == 1
    assert evaluations[0].passed is False
    rows = [record.data for record in evaluations[0].metadata["problems"].value.records]
    assert any(row["field"] == "schedule.cron" and "bad_cron" in row["spec"] for row in rows)
    assert evaluations[0].metadata["problem_count"].value == len(catalog.problems)


def test_catalog_health_sensor_requests_one_run_per_catalog_version() -> None:
    catalog = load_catalog(BROKEN)
    defs = build_definitions(catalog)
    sensor = defs.resolve_sensor_def("catalog_health_sensor")
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(sensor_context(instance))
        assert [r.run_key for r in first.run_requests] == [f"catalog-{catalog.fingerprint()}"]
        again = sensor.evaluate_tick(sensor_context(instance, first.cursor))
        assert again.run_requests == []


def _many_tasks_catalog(tmp_path: Path, count: int) -> Path:
    tasks = "\n".join(
        f"  - {{name: task_{i:04d}, owner: x, agent: a, prompt: 'task {i}', schedule: '0 9 * * *'}}"
        for i in range(count)
    )
    (tmp_path / "c.yaml").write_text(
        'agents: [{name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}]\n'
        "tasks:\n"
        f"{tasks}\n"
        "  - {name: root, owner: x, agent: a, prompt: r, retries: {count: 0}}\n"
        "  - {name: leaf_a, owner: x, agent: a, prompt: '{{ upstream.root }}', depends_on: [root]}\n"
        "  - {name: leaf_b, owner: x, agent: a, prompt: '{{ upstream.root }}', depends_on: [root]}\n"
    )
    return tmp_path


def test_tasks_share_ops_up_to_the_cap_and_upstream_tasks_get_their_own(tmp_path: Path) -> None:
    catalog = load_catalog(_many_tasks_catalog(tmp_path, 250))
    assert catalog.ok, catalog.problems
    workflows = find_workflows(catalog)
    assert [(w.name, w.tasks) for w in workflows] == [("leaf_a", ("root", "leaf_a", "leaf_b"))]
    groups = {g.op_name: g for g in group_tasks(catalog, workflows)}
    standalone = [g for g in groups.values() if g.workflow is None]
    assert sorted(len(g.tasks) for g in standalone) == [50, 100, 100]
    assert all(len(g.tasks) <= MAX_TASKS_PER_OP for g in groups.values())
    assert groups["root"].tasks == ("root",)  # others depend on it: an op of its own
    assert groups["leaf_a_a_tasks"].tasks == ("leaf_a", "leaf_b")
    assert {name for name in groups if name.startswith("a_tasks")} == {"a_tasks", "a_tasks_2", "a_tasks_3"}
    every_task = sorted(t for g in groups.values() for t in g.tasks)
    assert every_task == sorted(catalog.tasks)
    defs = build_definitions(catalog)
    # + prompt_history, prompt_tuning, agent_catalog, agents/a
    assert len(defs.resolve_asset_graph().get_all_asset_keys()) == 253 + 4


def test_launchpad_config_scaffolds_each_tasks_variables(example_defs: dg.Definitions) -> None:
    job = example_defs.resolve_job_def(ALL_TASKS_JOB)
    op_name = op_of(load_catalog(EXAMPLE))["daily_digest"]
    assert op_name == "demo_tasks", "a shared op says what it holds"
    op_config = job.graph.node_named(op_name).definition.config_schema.config_type
    fields = op_config.fields["daily_digest"].config_type.fields["variables"].config_type.fields
    assert fields["audience"].default_value == "the research team"
