"""Manual runs (a person materializes tasks) against a real demo agent on 127.0.0.1 and a real
SQLite Dagster instance: retries, failure classes, idempotency keys, sessions, run config,
upstream outputs, sample events."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.scheduling.scheduler import MANUAL_JOB as ALL_TASKS_JOB
from agent_pipelines.store import StateStore
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


def _checks(result, name: str = "succeeded") -> list:
    return [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name
    ]


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


def test_server_error_is_retried_at_its_own_delay_with_the_same_idempotency_key(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 500}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert result.success
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events), "no step restart"
    keys = {r.headers["idempotency-key"] for r in demo_agent.requests()}
    assert len(demo_agent.requests()) == 2 and len(keys) == 1
    assert _materializations(result)["report"].metadata["attempts"].value == 2
    retrying, succeeded = _checks(result)
    assert not retrying.passed and "retrying at" in retrying.description
    assert succeeded.passed


def test_client_error_fails_at_once_without_retry(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 400, "body": {"error": "bad request"}}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert not result.success
    assert len(demo_agent.requests()) == 1
    (failure,) = _step_failures(result)
    assert "client_error (HTTP 400)" in failure.event_specific_data.error.message
    (check,) = _checks(result)
    assert not check.passed and "client_error (HTTP 400)" in check.description


def test_timeout_of_non_idempotent_task_fails_with_outcome_unknown(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"delay_s": 2}])
    result = _run(_defs(tmp_path, demo_agent.url, ONE_TASK), instance, "report")
    assert not result.success
    assert len(demo_agent.requests()) == 1, "a timed-out side-effecting call must not be re-sent"
    (failure,) = _step_failures(result)
    assert "timeout" in failure.event_specific_data.error.message
    key = demo_agent.requests()[0].headers["idempotency-key"]
    execution = _store(instance).get_execution(key)
    assert (execution.status, execution.outcome, execution.failure_kind) == ("unknown", "unknown", "timeout")
    assert "idempotent: true" in execution.reason


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
    assert defs.resolve_job_def(ALL_TASKS_JOB).graph.node_named("serial_tasks")
    result = _run(defs, instance, "alpha", "bravo", "charlie")
    assert not result.success
    assert set(_materializations(result)) == {"alpha", "charlie"}
    (failure,) = _step_failures(result)
    assert "bravo: failed: client_error" in failure.event_specific_data.error.message
    assert len(demo_agent.requests()) == 3


def test_a_retry_resends_only_what_failed(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{}, {"status": 503}])
    defs = _defs(tmp_path, demo_agent.url, THREE_TASKS, _serial_agent(demo_agent.url))
    result = _run(defs, instance, "alpha", "bravo", "charlie")
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


def test_task_sessions_continue_across_runs_with_ids_we_choose(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, SESSIONS)
    for _ in range(2):
        assert _run(defs, instance, "claw_chat", "hermes_chat", "plain_chat", "one_off").success
    by_task: dict[str, list] = {}
    for request in demo_agent.requests():
        prompt = request.body["messages"][-1]["content"]
        by_task.setdefault(prompt, []).append(request)

    claw = by_task["hello claw"]
    assert claw[0].headers["x-openclaw-session-key"] == claw[1].headers["x-openclaw-session-key"] == "agent-pipelines-claw_chat"
    hermes = by_task["hello hermes"]
    assert [r.headers["x-hermes-session-id"] for r in hermes] == ["agent-pipelines-hermes_chat"] * 2
    plain = by_task["hello plain"]
    assert [m["role"] for m in plain[1].body["messages"]] == ["user", "assistant", "user"]
    assert plain[1].body["messages"][0]["content"] == "hello plain"
    once = [r.headers["x-openclaw-session-key"] for r in by_task["hello once"]]
    assert len(set(once)) == 2 and all(key.startswith("agent-pipelines-one_off-") for key in once), "a fresh explicit id each time"


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


def test_downstream_launched_alone_on_a_fresh_instance_runs_its_upstream_first(tmp_path, demo_agent, instance) -> None:
    result = _run(_defs(tmp_path, demo_agent.url, WORKFLOW), instance, "brief")
    assert result.success
    gather, brief = demo_agent.requests()
    assert gather.body["messages"][-1]["content"] == "List open incidents."
    outputs = {k: m.metadata["output"].value for k, m in _materializations(result).items()}
    assert brief.body["messages"][-1]["content"] == f"Summarise: {outputs['gather']}"


def test_an_upstream_that_fails_in_the_run_stops_its_downstream(tmp_path, demo_agent, instance) -> None:
    demo_agent.push_faults([{"status": 400}])
    result = _run(_defs(tmp_path, demo_agent.url, WORKFLOW), instance, job="brief_workflow_job")
    assert not result.success
    assert len(demo_agent.requests()) == 1, "brief never ran on a missing output"


EVENT_TASK = """sources:
  - {name: ci, auth: {kind: bearer, token_env: CI_TOKEN}}
tasks:
  - name: review
    owner: ops
    agent: demo
    events: [{source: ci, type: deploy_finished}]
    prompt: "Review {{ event.payload.service }} {{ event.payload.version }} ({{ event.type }})."
"""


def test_an_event_task_launched_by_hand_takes_a_sample_event(tmp_path, demo_agent, instance) -> None:
    defs = _defs(tmp_path, demo_agent.url, EVENT_TASK)
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        _run(defs, instance, "review")
    assert "'event': {'payload': {'service'" in str(refused.value), "the error shows what to give"
    assert demo_agent.requests() == []
    config = {"ops": {"review": {"config": {"review": {"event": {"payload": {"service": "api", "version": "4.2"}}}}}}}
    result = _run(defs, instance, "review", run_config=config)
    assert result.success
    assert demo_agent.requests()[0].body["messages"][-1]["content"] == "Review api 4.2 (deploy_finished)."


DIFY = """\
- name: dify_app
  kind: dify
  base_url: {url}
  auth_env: DEMO_AGENT_TOKEN
"""


def test_a_conversation_the_agent_forgot_is_cleared(tmp_path, demo_agent, instance) -> None:
    tasks = """\
tasks:
  - {name: chat, owner: ops, agent: dify_app, prompt: "hello dify", session: task}
"""
    defs = _defs(tmp_path, demo_agent.url, tasks, DIFY.format(url=demo_agent.url))
    assert _run(defs, instance, "chat").success
    conversation = _store(instance).session_remote_id("chat", "dify_app")
    assert conversation
    assert _run(defs, instance, "chat").success
    assert demo_agent.requests()[-1].body["conversation_id"] == conversation
    demo_agent.push_faults([{"status": 404, "body": {"error": {"message": "conversation not found"}}}])
    assert not _run(defs, instance, "chat").success
    assert _store(instance).session_remote_id("chat", "dify_app") is None
    assert _run(defs, instance, "chat").success
    assert demo_agent.requests()[-1].body["conversation_id"] == ""
