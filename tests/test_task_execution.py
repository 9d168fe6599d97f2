"""Task steps against a real demo agent on 127.0.0.1 and a real SQLite Dagster instance:
retries, failure classes, idempotency keys, sessions, run config, upstream outputs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.factory import ALL_TASKS_JOB, build_definitions
from agent_pipelines.store import StateStore
from agent_pipelines.triggers import trigger_from_run_tags
from tests.conftest import write_catalog


def _defs(tmp_path: Path, agent_url: str, tasks_yaml: str, extra_agents: str = "") -> dg.Definitions:
    catalog = load_catalog(write_catalog(tmp_path / "catalog", agent_url, tasks_yaml, extra_agents))
    assert catalog.ok, "\n".join(map(str, catalog.problems))
    return build_definitions(catalog)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, *names: str, job: str = ALL_TASKS_JOB, **kwargs):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(n) for n in names] if names else None,
        raise_on_error=False,
        **kwargs,
    )


def _materializations(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }


def _step_failures(result) -> list:
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def _store(instance: dg.DagsterInstance) -> StateStore:
    return StateStore.for_instance(instance)


ONE_TASK = """\
tasks:
  - name: report
    owner: ops
    agent: demo
    prompt: "Write the report about {{ topic }}."
    variables: {topic: disks}
    retries: {count: 2, delay: 0s}
    timeout: 1s
"""


def test_success_records_everything_the_issue_asks_for(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, ONE_TASK)
    result = _run(defs, instance, "report")
    assert result.success
    materialization = _materializations(result)["report"]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert "Write the report about disks." in metadata["output"]
    assert "Write the report about disks." in metadata["prompt"]
    assert metadata["prompt_version"] == load_catalog(tmp_path / "catalog").prompt_versions["report"]
    assert metadata["agent"] == "demo" and metadata["model"] == "demo-model"
    assert metadata["latency_ms"] > 0
    assert metadata["tokens_in"] == 5 and metadata["tokens_out"] > 0
    assert metadata["attempts"] == 1
    assert metadata["trigger"] == "manual"
    assert materialization.tags["agent_pipelines/task"] == "report"
    assert materialization.tags["agent_pipelines/owner"] == "ops"
    assert materialization.tags["dagster/code_version"] == metadata["prompt_version"]
    run_tags = instance.get_run_by_id(result.run_id).tags
    assert run_tags["agent_pipelines/task"] == "report"
    assert run_tags["agent_pipelines/trigger"] == "manual"
    (request,) = demo_agent.requests()
    assert request.headers["authorization"] == "Bearer test-token"
    assert request.headers["idempotency-key"] == metadata["idempotency_key"]
    assert metadata["idempotency_key"] == f"agent-pipelines:report:manual:{result.run_id}"
    execution = _store(instance).get_execution(metadata["idempotency_key"])
    assert execution is not None and execution.status == "succeeded" and execution.attempts == 1


def test_server_error_is_retried_by_dagster_with_the_same_idempotency_key(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 500}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert result.success
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    keys = {r.headers["idempotency-key"] for r in demo_agent.requests()}
    assert len(demo_agent.requests()) == 2 and len(keys) == 1
    assert _materializations(result)["report"].metadata["attempts"].value == 2


def test_client_error_fails_at_once_without_retry(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 400, "body": {"error": "bad request"}}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert not result.success
    assert len(demo_agent.requests()) == 1
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    (failure,) = _step_failures(result)
    assert "client_error (HTTP 400)" in failure.event_specific_data.error.message


def test_timeout_of_non_idempotent_task_fails_with_outcome_unknown(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"delay_s": 2}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert not result.success
    assert len(demo_agent.requests()) == 1, "a timed-out side-effecting call must not be re-sent"
    assert instance.get_run_by_id(result.run_id).tags["agent_pipelines/outcome"] == "unknown"
    (failure,) = _step_failures(result)
    assert "timeout" in failure.event_specific_data.error.message
    key = demo_agent.requests()[0].headers["idempotency-key"]
    execution = _store(instance).get_execution(key)
    assert execution.outcome == "unknown" and execution.failure_kind == "timeout"


def test_timeout_of_idempotent_task_is_retried(tmp_path, demo_agent, instance) -> None:
    tasks = ONE_TASK.replace("timeout: 1s", "timeout: 500ms\n    idempotent: true").replace(
        "delay: 0s", "delay: 1500ms, jitter: none, backoff: constant"
    )
    demo_agent.push_faults([{"delay_s": 1}])
    result = _run(_defs(tmp_path, demo_agent.url, tasks), instance, "report")
    assert result.success
    requests = demo_agent.requests()
    assert len(requests) == 2
    assert requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]
    # The agent did the work once; the retry got the cached answer for the same key.
    assert demo_agent.state.executions_total == 1


def test_rate_limit_waits_for_retry_after(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 429, "retry_after": 1}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert result.success
    first, second = demo_agent.requests()
    assert second.received_at - first.received_at >= 0.95


def test_missing_token_is_a_clear_permanent_failure(tmp_path, demo_agent, instance, monkeypatch) -> None:
    monkeypatch.delenv("DEMO_AGENT_TOKEN")
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert not result.success
    assert demo_agent.requests() == []
    (failure,) = _step_failures(result)
    assert "DEMO_AGENT_TOKEN" in failure.event_specific_data.error.message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


THREE_TASKS = """\
tasks:
  - {name: alpha, owner: ops, agent: serial, prompt: "alpha", retries: {count: 1, delay: 0s}}
  - {name: bravo, owner: ops, agent: serial, prompt: "bravo", retries: {count: 1, delay: 0s}}
  - {name: charlie, owner: ops, agent: serial, prompt: "charlie", retries: {count: 1, delay: 0s}}
"""


def _serial_agent(url: str) -> str:
    # One request at a time, so fault steps hit tasks in group (name) order.
    return f"""\
- name: serial
  kind: openai_chat
  base_url: {url}
  auth_env: DEMO_AGENT_TOKEN
  model: demo-model
  max_concurrency: 1
"""


def test_tasks_sharing_an_op_are_materialized_separately(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{}, {"status": 400}])
    defs = _defs(tmp_path, demo_agent.url, THREE_TASKS, _serial_agent(demo_agent.url))
    assert defs.resolve_job_def(ALL_TASKS_JOB).graph.node_named("tasks__serial")
    result = _run(defs, instance)
    assert not result.success
    assert set(_materializations(result)) == {"alpha", "charlie"}
    (failure,) = _step_failures(result)
    assert "bravo: client_error" in failure.event_specific_data.error.message
    assert len(demo_agent.requests()) == 3


def test_step_retry_resends_only_what_failed(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{}, {"status": 503}])
    defs = _defs(tmp_path, demo_agent.url, THREE_TASKS, _serial_agent(demo_agent.url))
    result = _run(defs, instance)
    assert result.success
    prompts = [r.body["messages"][-1]["content"] for r in demo_agent.requests()]
    assert prompts == ["alpha", "bravo", "charlie", "bravo"]
    materializations = [
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert sorted(materializations) == ["alpha", "bravo", "charlie"], "each asset materialized once"


SESSIONS = """\
tasks:
  - {name: claw_chat, owner: ops, agent: claw, prompt: "hello claw", session: task}
  - {name: hermes_chat, owner: ops, agent: hermes, prompt: "hello hermes", session: task}
  - {name: plain_chat, owner: ops, agent: demo, prompt: "hello plain", session: task}
  - {name: one_off, owner: ops, agent: claw, prompt: "hello once"}
"""


def test_task_sessions_continue_across_runs(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, SESSIONS)
    for _ in range(2):
        assert _run(defs, instance).success
    by_task: dict[str, list] = {}
    for request in demo_agent.requests():
        prompt = request.body["messages"][-1]["content"]
        by_task.setdefault(prompt, []).append(request)

    claw = by_task["hello claw"]
    assert claw[0].headers["x-openclaw-session-key"] == claw[1].headers["x-openclaw-session-key"] == "agent-pipelines:claw_chat"
    hermes = by_task["hello hermes"]
    assert "x-hermes-session-id" not in hermes[0].headers
    first_hermes_session = _store(instance).session_remote_id("hermes_chat", "hermes")
    assert first_hermes_session and hermes[1].headers["x-hermes-session-id"] == first_hermes_session
    plain = by_task["hello plain"]
    assert [m["role"] for m in plain[1].body["messages"]] == ["user", "assistant", "user"]
    assert plain[1].body["messages"][0]["content"] == "hello plain"
    once = by_task["hello once"]
    assert all("x-openclaw-session-key" not in r.headers for r in once)


def test_run_config_overrides_prompt_variables(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, ONE_TASK)
    result = _run(
        defs, instance, "report", run_config={"ops": {"report": {"config": {"report": {"variables": {"topic": "fans"}}}}}}
    )
    assert result.success
    assert demo_agent.requests()[0].body["messages"][-1]["content"] == "Write the report about fans."


WORKFLOW = """\
tasks:
  - {name: gather, owner: ops, agent: demo, prompt: "List open incidents."}
  - name: brief
    owner: ops
    agent: hermes
    depends_on: [gather]
    prompt: "Summarise: {{ upstream.gather }}"
"""


def test_upstream_output_feeds_the_downstream_prompt(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, WORKFLOW)
    result = _run(defs, instance, job="brief_workflow_job")
    assert result.success
    outputs = {k: m.metadata["output"].value for k, m in _materializations(result).items()}
    brief_prompt = demo_agent.requests()[1].body["messages"][-1]["content"]
    assert brief_prompt == f"Summarise: {outputs['gather']}"
    # Running the downstream task alone reads the upstream's latest output.
    again = _run(defs, instance, "brief")
    assert again.success
    assert demo_agent.requests()[2].body["messages"][-1]["content"] == brief_prompt


def test_downstream_without_upstream_output_fails_clearly(tmp_path, demo_agent, instance) -> None:
    result = _run(_defs(tmp_path, demo_agent.url, WORKFLOW), instance, "brief")
    assert not result.success
    (failure,) = _step_failures(result)
    assert "upstream task 'gather' has no output yet" in failure.event_specific_data.error.message
    assert demo_agent.requests() == []


def test_scheduled_due_time_drives_key_and_template(tmp_path, demo_agent, instance) -> None:
    tasks = """\
tasks:
  - name: digest
    owner: ops
    agent: demo
    prompt: "Digest for {{ due_time.strftime('%Y-%m-%d %H:%M %Z') }}"
    schedule: {cron: "0 9 * * *", timezone: Europe/Paris}
"""
    defs = _defs(tmp_path, demo_agent.url, tasks)
    due = "2026-11-23T08:00:00+00:00"
    result = _run(defs, instance, "digest", tags={"agent_pipelines/due_time": due, "agent_pipelines/trigger": "schedule"})
    assert result.success
    request = demo_agent.requests()[0]
    assert request.body["messages"][-1]["content"] == "Digest for 2026-11-23 09:00 CET"
    assert request.headers["idempotency-key"] == "agent-pipelines:digest:schedule:2026-11-23T08:00:00.000Z"


def test_idempotency_key_survives_reexecution() -> None:
    original = trigger_from_run_tags({}, "run-1")
    reexecuted = trigger_from_run_tags({"dagster/root_run_id": "run-1", "dagster/parent_run_id": "run-1"}, "run-2")
    assert original.idempotency_key("t") == reexecuted.idempotency_key("t")
    scheduled = trigger_from_run_tags({".dagster/scheduled_execution_time": "2026-11-23T09:00:00+00:00"}, "run-3")
    assert scheduled.kind == "schedule"
    assert scheduled.due_time == dt.datetime(2026, 11, 23, 9, tzinfo=dt.timezone.utc)
    assert scheduled.idempotency_key("t") == "agent-pipelines:t:schedule:2026-11-23T09:00:00.000Z"


def test_a_conversation_the_agent_forgot_is_cleared(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, SESSIONS)
    assert _run(defs, instance, "hermes_chat").success
    assert _store(instance).session_remote_id("hermes_chat", "hermes")
    demo_agent.push_faults([{"status": 404, "body": {"error": {"message": "session not found"}}}])
    assert not _run(defs, instance, "hermes_chat").success
    assert _store(instance).session_remote_id("hermes_chat", "hermes") is None
    assert _run(defs, instance, "hermes_chat").success
    assert "x-hermes-session-id" not in demo_agent.requests()[-1].headers
