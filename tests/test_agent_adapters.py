"""Every agent client against the real demo agent over HTTP on 127.0.0.1: wire format,
failure classification and session continuity."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest

from agent_pipelines.local_platform import free_port
from agent_pipelines.demo_agent import (
    DemoAgentConfig,
    RunningDemoAgent,
    compose_answer,
    run_in_thread,
)
from agent_pipelines.agents import (
    AGENT_CLIENTS,
    KIND_DEFAULTS,
    AgentCallError,
    AgentRequest,
    AgentResponse,
    AgentSettings,
    ChatMessage,
    FailureKind,
    SessionState,
    create_client,
)
from agent_pipelines.agents.dify import DifyClient
from agent_pipelines.agents.http_agent import HttpAgentClient
from agent_pipelines.agents.openai_chat import HermesClient, OpenAIChatClient, OpenClawClient

TOKEN = "s3cret"
PROMPT = "Summarise the quarterly report\nwith all the details"
SYSTEM = "Be brief."
SESSION_KEY = "task:daily-report"

HTTP_OPTIONS = {
    "path": "/agent",
    "body": {
        "prompt": "{{ prompt }}",
        "system": "{{ system }}",
        "session_id": "{{ session_id }}",
        "meta": {"task": "task={{ task }}", "key": "{{ idempotency_key }}", "fixed": [1, True]},
    },
    "output_path": "output",
    "tokens_in_path": "usage.input_tokens",
    "tokens_out_path": "usage.output_tokens",
    "session_id_path": "session_id",
}


@dataclass(frozen=True)
class Case:
    kind: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


CASES = {
    "openai_chat": Case("openai_chat", "/v1/chat/completions", model="demo-model"),
    "openclaw": Case("openclaw", "/v1/chat/completions", {"agent_id": "ops"}),
    "hermes": Case("hermes", "/v1/chat/completions"),
    "dify_chat": Case("dify", "/v1/chat-messages", {"app_mode": "chat"}),
    "dify_workflow": Case("dify", "/v1/workflows/run", {"app_mode": "workflow"}),
    "http": Case("http", "/agent", HTTP_OPTIONS),
}


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningDemoAgent]:
    with run_in_thread(DemoAgentConfig(token=TOKEN)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_agent(agent: RunningDemoAgent) -> None:
    agent.reset()


def settings_for(case: Case | str, base_url: str, **changes: Any) -> AgentSettings:
    case = CASES[case] if isinstance(case, str) else case
    values: dict[str, Any] = {
        "name": f"demo-{case.kind}",
        "kind": case.kind,
        "base_url": base_url,
        "model": case.model,
        "timeout_s": 5.0,
        "auth_token": TOKEN,
        "options": case.options,
    }
    values.update(changes)
    return AgentSettings(**values)


def make_request(
    key: str = "idem-1",
    *,
    prompt: str = PROMPT,
    mode: str = "task",
    remote_id: str | None = None,
    history: tuple[ChatMessage, ...] = (),
    timeout_s: float = 5.0,
    system: str | None = SYSTEM,
    variables: dict[str, Any] | None = None,
) -> AgentRequest:
    return AgentRequest(
        prompt=prompt,
        idempotency_key=key,
        session=SessionState(
            mode=mode,  # type: ignore[arg-type]
            key=SESSION_KEY if mode == "task" else f"isolated:{key}",
            remote_id=remote_id,
            history=history,
        ),
        timeout_s=timeout_s,
        task="daily-report",
        system=system,
        variables=variables or {},
    )


_TRANSPORT = {"name": "aiohttp"}


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every adapter test runs over both HTTP clients: classification must not depend on it."""
    _TRANSPORT["name"] = request.param
    return request.param


def open_http() -> contextlib.AbstractAsyncContextManager:
    if _TRANSPORT["name"] == "httpx":
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=16))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))


def run_calls(
    settings: AgentSettings, *requests: AgentRequest
) -> list[AgentResponse | AgentCallError]:
    """Send the requests one after another through one client; errors are returned, not raised."""

    async def main() -> list[AgentResponse | AgentCallError]:
        async with open_http() as http:
            client = create_client(settings, http)
            results: list[AgentResponse | AgentCallError] = []
            for request in requests:
                try:
                    results.append(await client.invoke(request))
                except AgentCallError as exc:
                    results.append(exc)
            return results

    return asyncio.run(main())


def call(settings: AgentSettings, request: AgentRequest | None = None) -> AgentResponse:
    (result,) = run_calls(settings, request or make_request())
    if isinstance(result, AgentCallError):
        raise result
    return result


def fail(settings: AgentSettings, request: AgentRequest | None = None) -> AgentCallError:
    (result,) = run_calls(settings, request or make_request())
    assert isinstance(result, AgentCallError), f"expected a failure, got {result!r}"
    return result


def words(text: str | None) -> int:
    return len((text or "").split())


# --- success, per kind ---------------------------------------------------------------------

EXPECTED_MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]


def expected_body(case_name: str) -> dict[str, Any]:
    return {
        "openai_chat": {
            "model": "demo-model",
            "messages": EXPECTED_MESSAGES,
            "stream": False,
            "user": SESSION_KEY,
        },
        "openclaw": {
            "model": "openclaw/ops",
            "messages": EXPECTED_MESSAGES,
            "stream": False,
            "user": SESSION_KEY,
        },
        "hermes": {"model": "hermes-agent", "messages": EXPECTED_MESSAGES, "stream": False},
        "dify_chat": {
            "inputs": {},
            "query": PROMPT,
            "response_mode": "blocking",
            "user": "agent-pipelines",
            "conversation_id": "",
        },
        "dify_workflow": {
            "inputs": {"query": PROMPT},
            "response_mode": "blocking",
            "user": "agent-pipelines",
        },
        "http": {
            "prompt": PROMPT,
            "system": SYSTEM,
            "session_id": None,  # a lone expression keeps its native type
            "meta": {"task": "task=daily-report", "key": "idem-1", "fixed": [1, True]},
        },
    }[case_name]


@pytest.mark.parametrize("case_name", list(CASES))
def test_success_sends_the_protocol_and_reads_the_answer(
    agent: RunningDemoAgent, case_name: str
) -> None:
    response = call(settings_for(case_name, agent.url))

    (sent,) = agent.requests()
    assert sent.method == "POST"
    assert sent.path == CASES[case_name].path
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["idempotency-key"] == "idem-1"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == expected_body(case_name)

    session_in_answer = {
        "openai_chat": SESSION_KEY,
        "openclaw": SESSION_KEY,
        "dify_workflow": None,
    }.get(case_name, response.session_id)
    assert response.output == compose_answer(PROMPT, session_in_answer, 1)
    assert response.latency_ms > 0

    expected_session = {
        "openai_chat": None,
        "openclaw": SESSION_KEY,
        "dify_workflow": None,
    }.get(case_name, "remote")
    if expected_session == "remote":
        assert response.session_id and agent.state.sessions == {response.session_id: 1}
    else:
        assert response.session_id == expected_session

    answer_words = words(response.output)
    expected_tokens = {
        "openai_chat": (words(SYSTEM) + words(PROMPT), answer_words),
        "openclaw": (words(SYSTEM) + words(PROMPT), answer_words),
        "hermes": (words(SYSTEM) + words(PROMPT), answer_words),
        "dify_chat": (words(PROMPT), answer_words),
        "dify_workflow": (None, words(PROMPT) + answer_words),
        "http": (words(PROMPT) + words(SYSTEM), answer_words),
    }[case_name]
    assert (response.tokens_in, response.tokens_out) == expected_tokens
    assert response.metadata["http_status"] == 200
    assert agent.state.executions_total == 1


def test_openai_family_metadata(agent: RunningDemoAgent) -> None:
    response = call(settings_for("openai_chat", agent.url))
    assert response.model == "demo-model"
    assert response.metadata["finish_reason"] == "stop"
    assert str(response.metadata["response_id"]).startswith("chatcmpl-")
    assert response.metadata["model"] == "demo-model"


def test_dify_workflow_metadata_has_the_run_id(agent: RunningDemoAgent) -> None:
    response = call(settings_for("dify_workflow", agent.url))
    assert response.metadata["workflow_run_id"]
    assert response.metadata["status"] == "succeeded"


# --- failures, per kind --------------------------------------------------------------------


@pytest.mark.parametrize("case_name", list(CASES))
def test_slow_agent_is_a_timeout_with_unknown_outcome(
    agent: RunningDemoAgent, case_name: str
) -> None:
    agent.push_faults([{"delay_s": 2}])
    error = fail(settings_for(case_name, agent.url), make_request(timeout_s=0.3))
    assert error.kind is FailureKind.TIMEOUT
    assert error.outcome_unknown
    assert not error.is_retryable(idempotent=False)
    assert error.is_retryable(idempotent=True)


@pytest.mark.parametrize("case_name", list(CASES))
def test_server_error_then_success_with_the_same_idempotency_key(
    agent: RunningDemoAgent, case_name: str
) -> None:
    agent.push_faults([{"status": 500}])
    first, second = run_calls(settings_for(case_name, agent.url), make_request(), make_request())

    assert isinstance(first, AgentCallError)
    assert first.kind is FailureKind.SERVER_ERROR
    assert first.status_code == 500
    assert first.is_retryable(idempotent=False)
    assert not first.outcome_unknown
    assert isinstance(second, AgentResponse) and second.output
    assert [r.headers["idempotency-key"] for r in agent.requests()] == ["idem-1", "idem-1"]
    assert (agent.state.requests_total, agent.state.executions_total) == (2, 1)


@pytest.mark.parametrize("case_name", list(CASES))
def test_rate_limit_carries_retry_after(agent: RunningDemoAgent, case_name: str) -> None:
    agent.push_faults([{"status": 429, "retry_after": 2}])
    error = fail(settings_for(case_name, agent.url))
    assert error.kind is FailureKind.RATE_LIMITED
    assert error.status_code == 429
    assert error.retry_after_s == 2
    assert error.is_retryable(idempotent=False)


@pytest.mark.parametrize("case_name", list(CASES))
def test_non_json_answer_is_malformed(agent: RunningDemoAgent, case_name: str) -> None:
    agent.push_faults([{"malformed": True}])
    error = fail(settings_for(case_name, agent.url))
    assert error.kind is FailureKind.MALFORMED
    assert error.outcome_unknown
    assert not error.is_retryable(idempotent=False)
    assert error.is_retryable(idempotent=True)


@pytest.mark.parametrize("case_name", list(CASES))
def test_dropped_connection_is_disconnected(agent: RunningDemoAgent, case_name: str) -> None:
    agent.push_faults([{"drop": True}])
    error = fail(settings_for(case_name, agent.url))
    assert error.kind is FailureKind.DISCONNECTED
    assert error.outcome_unknown


@pytest.mark.parametrize("case_name", list(CASES))
def test_connection_refused_is_retryable(case_name: str) -> None:
    error = fail(settings_for(case_name, f"http://127.0.0.1:{free_port()}"))
    assert error.kind is FailureKind.CONNECTION
    assert error.is_retryable(idempotent=False)
    assert not error.outcome_unknown


@pytest.mark.parametrize("case_name", list(CASES))
def test_wrong_token_is_an_auth_error(agent: RunningDemoAgent, case_name: str) -> None:
    error = fail(settings_for(case_name, agent.url, auth_token="wrong"))
    assert error.kind is FailureKind.AUTH
    assert error.status_code == 401
    assert not error.is_retryable(idempotent=True)
    assert agent.state.executions_total == 0


# --- sessions ------------------------------------------------------------------------------


def turn_of(response: AgentResponse) -> int:
    return int(response.output.rsplit("- turn: ", 1)[1].strip())


def test_openclaw_task_mode_keeps_one_session_key(agent: RunningDemoAgent) -> None:
    responses = run_calls(
        settings_for("openclaw", agent.url), *(make_request(f"idem-{i}") for i in range(3))
    )
    assert all(isinstance(r, AgentResponse) for r in responses)
    assert [turn_of(r) for r in responses] == [1, 2, 3]  # type: ignore[arg-type]
    assert {r.session_id for r in responses} == {SESSION_KEY}  # type: ignore[union-attr]
    for sent in agent.requests():
        assert sent.headers["x-openclaw-session-key"] == SESSION_KEY
        assert sent.headers["x-openclaw-agent-id"] == "ops"
        assert sent.body["user"] == SESSION_KEY


def test_openclaw_isolated_mode_sends_a_fresh_explicit_key_each_time(agent: RunningDemoAgent) -> None:
    first, second = run_calls(
        settings_for("openclaw", agent.url),
        make_request("a", mode="isolated"),
        make_request("b", mode="isolated"),
    )
    assert isinstance(first, AgentResponse) and isinstance(second, AgentResponse)
    assert (first.session_id, second.session_id) == ("isolated:a", "isolated:b")
    assert (turn_of(first), turn_of(second)) == (1, 1)
    assert sorted(sent.headers["x-openclaw-session-key"] for sent in agent.requests()) == ["isolated:a", "isolated:b"]


def test_openclaw_model_defaults_to_the_agent_id(agent: RunningDemoAgent) -> None:
    call(settings_for(Case("openclaw", "/v1/chat/completions"), agent.url), make_request("a"))
    call(settings_for("openclaw", agent.url, model="openclaw/custom"), make_request("b"))
    first, second = agent.requests()
    assert (first.body["model"], first.headers["x-openclaw-agent-id"]) == ("openclaw/main", "main")
    assert (second.body["model"], second.headers["x-openclaw-agent-id"]) == (
        "openclaw/custom",
        "ops",
    )


def test_hermes_task_session_uses_the_id_we_choose(agent: RunningDemoAgent) -> None:
    settings = settings_for("hermes", agent.url)
    first = call(settings, make_request("a"))
    second = call(settings, make_request("b"))
    assert first.session_id == second.session_id == SESSION_KEY
    assert (turn_of(first), turn_of(second)) == (1, 2)
    assert [sent.headers["x-hermes-session-id"] for sent in agent.requests()] == [SESSION_KEY, SESSION_KEY]


def test_hermes_isolated_mode_sends_a_fresh_explicit_id(agent: RunningDemoAgent) -> None:
    """Without an id Hermes derives one from the prompt: a repeated prompt would not be fresh."""
    settings = settings_for("hermes", agent.url)
    first = call(settings, make_request("a", mode="isolated", remote_id="old"))
    second = call(settings, make_request("b", mode="isolated"))
    assert [sent.headers["x-hermes-session-id"] for sent in agent.requests()] == ["isolated:a", "isolated:b"]
    assert (turn_of(first), turn_of(second)) == (1, 1)


def test_hermes_turn_failed_inside_a_200_answer_is_a_server_error(agent: RunningDemoAgent) -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "HTTP 400: model refused"}, "finish_reason": "error"}],
        "hermes": {"completed": False, "partial": False, "failed": True, "error": "HTTP 400: model refused", "error_code": "agent_error"},
    }
    agent.push_faults([{"status": 200, "body": body, "headers": {"X-Hermes-Completed": "false"}}])
    error = fail(settings_for("hermes", agent.url))
    assert error.kind is FailureKind.SERVER_ERROR and "model refused" in error.message
    assert error.is_retryable(idempotent=False)
    partial = {**body, "hermes": {**body["hermes"], "partial": True}}
    agent.push_faults([{"status": 200, "body": partial}])
    error = fail(settings_for("hermes", agent.url))
    assert error.outcome_unknown, "tools may have run: not safe to send again"


def test_hermes_failed_turn_carries_the_details(agent: RunningDemoAgent) -> None:
    agent.push_faults(
        [
            {
                "status": 502,
                "body": {"error": {"message": "tool 'terminal' crashed", "type": "agent_error"}},
            }
        ]
    )
    error = fail(settings_for("hermes", agent.url))
    assert error.kind is FailureKind.SERVER_ERROR
    assert error.status_code == 502
    assert "tool 'terminal' crashed" in error.message
    assert error.details["message"] == "tool 'terminal' crashed"
    assert error.details["type"] == "agent_error"
    assert error.is_retryable(idempotent=False)


def test_hermes_failed_turn_with_a_long_message_keeps_its_start(agent: RunningDemoAgent) -> None:
    long_message = "step 3 failed: " + "x" * 2000
    agent.push_faults(
        [{"status": 502, "body": {"error": {"message": long_message, "type": "agent_error"}}}]
    )
    error = fail(settings_for("hermes", agent.url))
    assert error.kind is FailureKind.SERVER_ERROR
    assert "step 3 failed: xxx" in error.message


def test_dify_chat_round_trips_the_conversation_id(agent: RunningDemoAgent) -> None:
    settings = settings_for("dify_chat", agent.url)
    first = call(settings, make_request("a"))
    second = call(settings, make_request("b", remote_id=first.session_id))
    assert first.session_id and second.session_id == first.session_id
    assert (turn_of(first), turn_of(second)) == (1, 2)
    assert [r.body["conversation_id"] for r in agent.requests()] == ["", first.session_id]


def test_dify_chat_isolated_mode_starts_a_new_conversation(agent: RunningDemoAgent) -> None:
    response = call(
        settings_for("dify_chat", agent.url), make_request(mode="isolated", remote_id="c-1")
    )
    (sent,) = agent.requests()
    assert sent.body["conversation_id"] == ""
    assert response.session_id != "c-1"


def test_openai_chat_replays_history(agent: RunningDemoAgent) -> None:
    history = (ChatMessage("user", "first question"), ChatMessage("assistant", "first answer"))
    response = call(settings_for("openai_chat", agent.url), make_request(history=history))
    (sent,) = agent.requests()
    assert sent.body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": PROMPT},
    ]
    assert response.tokens_in == words(SYSTEM) + 4 + words(PROMPT)


@pytest.mark.parametrize("case_name", ["openclaw", "hermes"])
def test_stateful_chat_kinds_do_not_replay_history(agent: RunningDemoAgent, case_name: str) -> None:
    history = (ChatMessage("user", "first question"), ChatMessage("assistant", "first answer"))
    call(settings_for(case_name, agent.url), make_request(history=history))
    (sent,) = agent.requests()
    assert sent.body["messages"] == EXPECTED_MESSAGES


def test_openai_chat_isolated_replays_nothing(agent: RunningDemoAgent) -> None:
    history = (ChatMessage("user", "old"), ChatMessage("assistant", "older"))
    call(settings_for("openai_chat", agent.url), make_request("k", mode="isolated", system=None, history=history))
    (sent,) = agent.requests()
    assert sent.body["user"] == "isolated:k"
    assert sent.body["messages"] == [{"role": "user", "content": PROMPT}]


def test_openai_chat_without_a_model_is_a_config_error(agent: RunningDemoAgent) -> None:
    error = fail(settings_for("openai_chat", agent.url, model=None))
    assert error.kind is FailureKind.CONFIG
    assert agent.state.requests_total == 0


def test_http_agent_round_trips_the_session_id(agent: RunningDemoAgent) -> None:
    settings = settings_for("http", agent.url)
    first = call(settings, make_request("a"))
    second = call(settings, make_request("b", remote_id=first.session_id))
    assert second.session_id == first.session_id
    assert (turn_of(first), turn_of(second)) == (1, 2)


# --- Dify workflow specifics ---------------------------------------------------------------


def workflow_body(status: str = "succeeded", outputs: Any = None, error: str | None = None) -> dict:
    return {
        "workflow_run_id": "run-1",
        "task_id": "task-1",
        "data": {
            "id": "run-1",
            "status": status,
            "outputs": outputs,
            "error": error,
            "total_tokens": 7,
        },
    }


def test_dify_failed_workflow_is_a_server_error(agent: RunningDemoAgent) -> None:
    agent.push_faults(
        [{"status": 200, "body": workflow_body("failed", error="node llm: quota exceeded")}]
    )
    error = fail(settings_for("dify_workflow", agent.url))
    assert error.kind is FailureKind.SERVER_ERROR
    assert "node llm: quota exceeded" in error.message
    assert error.details["workflow_run_id"] == "run-1"


@pytest.mark.parametrize(
    ("outputs", "output_key", "expected"),
    [
        ({"text": "from text", "other": "x"}, None, "from text"),
        ({"summary": "the only one"}, None, "the only one"),
        ({"a": "x", "b": {"n": 2}}, "b", '{"n": 2}'),
    ],
)
def test_dify_workflow_picks_the_output(
    agent: RunningDemoAgent, outputs: dict, output_key: str | None, expected: str
) -> None:
    options = {"app_mode": "workflow", **({"output_key": output_key} if output_key else {})}
    agent.push_faults([{"status": 200, "body": workflow_body(outputs=outputs)}])
    response = call(settings_for("dify_workflow", agent.url, options=options))
    assert response.output == expected
    assert (response.tokens_in, response.tokens_out) == (None, 7)
    assert response.metadata["workflow_run_id"] == "run-1"


@pytest.mark.parametrize(
    ("outputs", "output_key"),
    [({"a": "x", "b": "y"}, None), ({"text": "x"}, "missing"), (None, None)],
)
def test_dify_workflow_without_a_usable_output_is_malformed(
    agent: RunningDemoAgent, outputs: Any, output_key: str | None
) -> None:
    options = {"app_mode": "workflow", **({"output_key": output_key} if output_key else {})}
    agent.push_faults([{"status": 200, "body": workflow_body(outputs=outputs)}])
    error = fail(settings_for("dify_workflow", agent.url, options=options))
    assert error.kind is FailureKind.MALFORMED


def test_dify_workflow_input_key(agent: RunningDemoAgent) -> None:
    options = {"app_mode": "workflow", "input_key": "topic", "user": "ops-bot"}
    response = call(settings_for("dify_workflow", agent.url, options=options))
    (sent,) = agent.requests()
    assert sent.body["inputs"] == {"topic": PROMPT}
    assert sent.body["user"] == "ops-bot"
    assert response.output == compose_answer(PROMPT, None, 1)


def test_dify_unknown_app_mode_is_a_config_error(agent: RunningDemoAgent) -> None:
    error = fail(settings_for("dify_chat", agent.url, options={"app_mode": "agent-chat"}))
    assert error.kind is FailureKind.CONFIG
    assert agent.state.requests_total == 0


# --- HTTP agent specifics ------------------------------------------------------------------


def test_http_agent_default_body_and_path(agent: RunningDemoAgent) -> None:
    options = {"path": "/agent"}
    response = call(settings_for("http", agent.url, options=options))
    (sent,) = agent.requests()
    assert sent.body == {"prompt": PROMPT}
    assert response.tokens_in is None and response.session_id is None


def test_http_agent_keeps_native_types_of_lone_expressions(agent: RunningDemoAgent) -> None:
    body = {
        "prompt": "{{ prompt }}",
        "vars": "{{ variables }}",
        "count": "{{ variables.n + 1 }}",
        "text": "n={{ variables.n }}",
        "items": ["{{ variables.tags }}", "{{ session_key }}"],
    }
    options = {"path": "/agent", "body": body}
    call(
        settings_for("http", agent.url, options=options),
        make_request(variables={"n": 2, "tags": ["a"]}),
    )
    (sent,) = agent.requests()
    assert sent.body == {
        "prompt": PROMPT,
        "vars": {"n": 2, "tags": ["a"]},
        "count": 3,
        "text": "n=2",
        "items": [["a"], SESSION_KEY],
    }


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "{{ nope }}"},
        {"prompt": "{{ prompt "},
        {"prompt": "x {{ variables.missing }}"},
        {"prompt": "{{ variables.missing }}"},
    ],
)
def test_http_agent_template_errors_are_config_errors(agent: RunningDemoAgent, body: dict) -> None:
    options = {"path": "/agent", "body": body}
    error = fail(settings_for("http", agent.url, options=options))
    assert error.kind is FailureKind.CONFIG
    assert agent.state.requests_total == 0


def test_http_agent_output_path_with_indexes(agent: RunningDemoAgent) -> None:
    payload = {
        "data": {"choices": [{"text": "first"}, {"text": "second"}]},
        "n": {"in": 3, "out": 4},
    }
    agent.push_faults([{"status": 200, "body": payload}])
    options = {
        "path": "/agent",
        "output_path": "data.choices.1.text",
        "tokens_in_path": "n.in",
        "tokens_out_path": "n.out",
    }
    response = call(settings_for("http", agent.url, options=options))
    assert (response.output, response.tokens_in, response.tokens_out) == ("second", 3, 4)


def test_http_agent_missing_output_names_the_path(agent: RunningDemoAgent) -> None:
    options = {"path": "/agent", "output_path": "data.choices.0.text"}
    error = fail(settings_for("http", agent.url, options=options))
    assert error.kind is FailureKind.MALFORMED
    assert "data.choices.0.text" in error.message


# --- registry ------------------------------------------------------------------------------


def test_registry_knows_every_kind() -> None:
    assert AGENT_CLIENTS == {
        "openai_chat": OpenAIChatClient,
        "openclaw": OpenClawClient,
        "hermes": HermesClient,
        "dify": DifyClient,
        "http": HttpAgentClient,
    }
    assert KIND_DEFAULTS["openclaw"] == {"base_url": "http://127.0.0.1:18789", "model": None}
    assert KIND_DEFAULTS["hermes"] == {"base_url": "http://127.0.0.1:8642", "model": "hermes-agent"}
    assert KIND_DEFAULTS["dify"]["base_url"] is None
    assert OpenAIChatClient.replays_history and not HermesClient.replays_history


def test_create_client_fills_in_the_kind_defaults() -> None:
    async def main() -> None:
        async with open_http() as http:
            client = create_client(AgentSettings(name="h", kind="hermes", base_url=""), http)
            assert isinstance(client, HermesClient)
            assert client.settings.base_url == "http://127.0.0.1:8642"
            assert client.settings.model == "hermes-agent"
            for bad in (
                AgentSettings(name="x", kind="nope", base_url="http://127.0.0.1:1"),
                AgentSettings(name="d", kind="dify", base_url=""),
            ):
                with pytest.raises(AgentCallError) as caught:
                    create_client(bad, http)
                assert caught.value.kind is FailureKind.CONFIG

    asyncio.run(main())


def test_base_url_with_a_trailing_slash(agent: RunningDemoAgent) -> None:
    call(settings_for("hermes", agent.url + "/"))
    (sent,) = agent.requests()
    assert sent.path == "/v1/chat/completions"


@pytest.mark.parametrize(
    "changes",
    [{"base_url": "127.0.0.1:8642"}, {"auth_token": "t\u00f6ken"}, {"headers": {"X-Team": "a\nb"}}],
    ids=["no-scheme", "non-ascii-token", "newline-in-header"],
)
def test_unsendable_requests_are_config_errors(agent: RunningDemoAgent, changes: dict) -> None:
    error = fail(settings_for("hermes", **{"base_url": agent.url, **changes}))
    assert error.kind is FailureKind.CONFIG
    assert not error.is_retryable(idempotent=True)
    assert agent.state.requests_total == 0


def test_error_message_never_contains_the_token(agent: RunningDemoAgent) -> None:
    agent.push_faults([{"status": 500}])
    error = fail(settings_for("openai_chat", agent.url))
    assert TOKEN not in json.dumps({"m": error.message, "d": error.details}, default=str)
