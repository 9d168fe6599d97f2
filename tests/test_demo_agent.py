"""The demo agent over real HTTP: deterministic answers, sessions, idempotency, auth, faults,
failure rate and concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent_pipelines.demo_agent import (
    DemoAgentConfig,
    RunningDemoAgent,
    compose_answer,
    run_in_thread,
)


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningDemoAgent]:
    with run_in_thread() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_agent(agent: RunningDemoAgent) -> None:
    agent.reset()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def ask(
    http: httpx.Client, url: str, prompt: str, key: str | None = None, **body: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return http.post(f"{url}/agent", json={"prompt": prompt, **body}, headers=headers)


def chat(messages: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    return {"model": "demo-model", "messages": messages, "stream": False, **fields}


# --- answers -------------------------------------------------------------------------------


def test_health(agent: RunningDemoAgent, http: httpx.Client) -> None:
    assert http.get(f"{agent.url}/health").json() == {"status": "ok"}
    assert agent.state.requests_total == 0  # not an agent request


def test_answers_are_deterministic_markdown(agent: RunningDemoAgent, http: httpx.Client) -> None:
    first = ask(http, agent.url, "hello world", session_id="s-1").json()
    agent.reset()
    again = ask(http, agent.url, "hello world", session_id="s-1").json()
    assert first == again
    assert first["output"] == compose_answer("hello world", "s-1", 1)
    assert first["output"].startswith("## hello world\n")
    assert "- digest: b94d27b9" in first["output"]  # sha256("hello world")[:8]
    assert "- words: 2" in first["output"]
    assert first["usage"] == {"input_tokens": 2, "output_tokens": len(first["output"].split())}
    assert first["session_id"] == "s-1"


def test_json_prompts_get_a_json_object(agent: RunningDemoAgent, http: httpx.Client) -> None:
    prompt = "List the open incidents.\nAnswer in json, please."
    answer = json.loads(ask(http, agent.url, prompt, session_id="s").json()["output"])
    assert answer == {
        "summary": "List the open incidents.",
        "digest": hashlib.sha256(prompt.encode()).hexdigest()[:8],
        "words": 8,
        "session_id": "s",
        "turn": 1,
    }


def test_turns_count_per_session(agent: RunningDemoAgent, http: httpx.Client) -> None:
    turns = [
        json.loads(ask(http, agent.url, "JSON turn", session_id=sid).json()["output"])["turn"]
        for sid in ("a", "a", "b", "a")
    ]
    assert turns == [1, 2, 1, 3]
    assert agent.state.sessions == {"a": 3, "b": 1}


def test_chat_completions_sessions(agent: RunningDemoAgent, http: httpx.Client) -> None:
    url = f"{agent.url}/v1/chat/completions"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "JSON please"},
    ]

    fresh = http.post(url, json=chat(messages))
    new_id = fresh.headers["x-hermes-session-id"]
    assert new_id
    continued = http.post(url, json=chat(messages), headers={"X-Hermes-Session-Id": new_id})
    assert continued.headers["x-hermes-session-id"] == new_id
    assert json.loads(continued.json()["choices"][0]["message"]["content"])["turn"] == 2

    openclaw = [
        http.post(url, json=chat(messages), headers={"x-openclaw-session-key": "k"})
        for _ in range(2)
    ]
    assert [json.loads(r.json()["choices"][0]["message"]["content"])["turn"] for r in openclaw] == [
        1,
        2,
    ]
    by_user = http.post(url, json=chat(messages, user="k")).json()
    assert json.loads(by_user["choices"][0]["message"]["content"])["turn"] == 3
    assert by_user["usage"]["prompt_tokens"] == 4  # every message's words count


def test_dify_shapes(agent: RunningDemoAgent, http: httpx.Client) -> None:
    body = {
        "inputs": {},
        "query": "hi JSON",
        "response_mode": "blocking",
        "user": "u",
        "conversation_id": "",
    }
    first = http.post(f"{agent.url}/v1/chat-messages", json=body).json()
    second = http.post(
        f"{agent.url}/v1/chat-messages", json={**body, "conversation_id": first["conversation_id"]}
    ).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert json.loads(second["answer"])["turn"] == 2
    assert second["metadata"]["usage"]["prompt_tokens"] == 2

    run = http.post(
        f"{agent.url}/v1/workflows/run",
        json={"inputs": {"query": "hello world"}, "response_mode": "blocking", "user": "u"},
    ).json()
    assert run["data"]["status"] == "succeeded"
    assert run["data"]["outputs"]["text"] == compose_answer("hello world", None, 1)
    assert run["workflow_run_id"] == run["data"]["id"]


def test_bad_bodies_are_400_and_consume_no_fault(
    agent: RunningDemoAgent, http: httpx.Client
) -> None:
    agent.push_faults([{"status": 503}])
    assert http.post(f"{agent.url}/v1/chat/completions", json={"model": "m"}).status_code == 400
    assert http.post(f"{agent.url}/agent", content=b"not json").status_code == 400
    assert ask(http, agent.url, "x").status_code == 503
    assert agent.state.executions_total == 0


# --- idempotency ---------------------------------------------------------------------------


def test_idempotency_key_replays_without_executing(
    agent: RunningDemoAgent, http: httpx.Client
) -> None:
    first = ask(http, agent.url, "do it", key="k-1")
    replay = ask(http, agent.url, "do it", key="k-1")
    other = ask(http, agent.url, "do it", key="k-2")
    assert replay.content == first.content
    assert replay.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in other.headers
    assert (agent.state.requests_total, agent.state.executions_total) == (3, 2)
    snapshot = http.get(f"{agent.url}/_control/requests").json()
    assert (snapshot["requests_total"], snapshot["executions_total"]) == (3, 2)


def test_concurrent_repeats_of_one_key_execute_once() -> None:
    with run_in_thread(DemoAgentConfig(latency_ms=100)) as agent:

        async def main() -> list[bytes]:
            async with httpx.AsyncClient(timeout=5.0) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            f"{agent.url}/agent",
                            json={"prompt": "once"},
                            headers={"Idempotency-Key": "same"},
                        )
                        for _ in range(5)
                    )
                )
            return [r.content for r in responses]

        bodies = asyncio.run(main())
        assert len(set(bodies)) == 1
        assert (agent.state.requests_total, agent.state.executions_total) == (5, 1)


def test_a_timed_out_request_still_executes_and_its_retry_is_replayed(
    agent: RunningDemoAgent, http: httpx.Client
) -> None:
    agent.push_faults([{"delay_s": 0.4}])
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            f"{agent.url}/agent",
            json={"prompt": "p"},
            headers={"Idempotency-Key": "k"},
            timeout=0.1,
        )
    deadline = time.monotonic() + 3
    while agent.state.executions_total == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    retry = ask(http, agent.url, "p", key="k")
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert agent.state.executions_total == 1


def test_reset_during_a_request_does_not_leak_into_the_counters(agent: RunningDemoAgent) -> None:
    agent.push_faults([{"delay_s": 0.3}])

    async def main() -> int:
        async with httpx.AsyncClient(timeout=5.0) as client:
            pending = asyncio.create_task(client.post(f"{agent.url}/agent", json={"prompt": "p"}))
            await asyncio.sleep(0.1)
            agent.reset()
            return (await pending).status_code

    assert asyncio.run(main()) == 503
    assert (agent.state.requests_total, agent.state.executions_total) == (0, 0)


# --- auth ----------------------------------------------------------------------------------


def test_token_is_required_when_configured(http: httpx.Client) -> None:
    with run_in_thread(DemoAgentConfig(token="t0k")) as agent:
        url = f"{agent.url}/agent"
        assert http.post(url, json={"prompt": "x"}).status_code == 401
        wrong = http.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert (
            http.post(
                url, json={"prompt": "x"}, headers={"Authorization": "Bearer t0k"}
            ).status_code
            == 200
        )
        assert http.get(f"{agent.url}/_control/requests").status_code == 200
        assert (agent.state.requests_total, agent.state.executions_total) == (3, 1)


# --- faults and failure rate ---------------------------------------------------------------


def test_fault_script_is_fifo_one_step_per_request(
    agent: RunningDemoAgent, http: httpx.Client
) -> None:
    agent.push_faults(
        [{"status": 500}, {"status": 429, "retry_after": 2}, {"status": 502, "body": {"x": 1}}]
    )
    first, second, third, fourth = (ask(http, agent.url, "p") for _ in range(4))
    assert first.status_code == 500
    assert (second.status_code, second.headers["retry-after"]) == (429, "2")
    assert (third.status_code, third.json()) == (502, {"x": 1})
    assert fourth.status_code == 200
    assert agent.state.executions_total == 1


def test_control_api_over_http(agent: RunningDemoAgent, http: httpx.Client) -> None:
    pushed = http.post(f"{agent.url}/_control/faults", json=[{"status": 503}])
    assert pushed.json() == {"faults_pending": 1}
    assert http.post(f"{agent.url}/_control/faults", json=[{"stauts": 500}]).status_code == 400
    before = time.time()
    assert ask(http, agent.url, "p", key="k", session_id="s").status_code == 503

    log = http.get(f"{agent.url}/_control/requests").json()
    (entry,) = log["requests"]
    assert (entry["method"], entry["path"]) == ("POST", "/agent")
    assert entry["headers"]["idempotency-key"] == "k"
    assert entry["body"] == {"prompt": "p", "session_id": "s"}
    assert before - 1 <= entry["received_at"] <= time.time()
    assert log["faults_pending"] == 0

    assert http.post(f"{agent.url}/_control/reset").json() == {"status": "reset"}
    assert http.get(f"{agent.url}/_control/requests").json()["requests"] == []


def test_delay_then_answer(agent: RunningDemoAgent, http: httpx.Client) -> None:
    agent.push_faults([{"delay_s": 0.2}])
    started = time.perf_counter()
    assert ask(http, agent.url, "p").status_code == 200
    assert time.perf_counter() - started >= 0.2


def test_malformed_answer_is_executed_then_replayed_intact(
    agent: RunningDemoAgent, http: httpx.Client
) -> None:
    agent.push_faults([{"malformed": True}])
    broken = ask(http, agent.url, "p", key="k")
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    assert ask(http, agent.url, "p", key="k").json()["output"]
    assert agent.state.executions_total == 1


def test_drop_closes_the_connection(agent: RunningDemoAgent, http: httpx.Client) -> None:
    agent.push_faults([{"drop": True}])
    with pytest.raises(httpx.RemoteProtocolError):
        ask(http, agent.url, "p")
    assert ask(http, agent.url, "p").status_code == 200


def test_failure_rate_is_deterministic_from_the_seed(http: httpx.Client) -> None:
    def statuses(seed: int) -> list[int]:
        with run_in_thread(DemoAgentConfig(failure_rate=0.3, seed=seed)) as agent:
            codes = [ask(http, agent.url, "p").status_code for _ in range(100)]
            assert agent.state.executions_total == codes.count(200)
            return codes

    first = statuses(7)
    assert 15 <= first.count(500) <= 45
    assert set(first) == {200, 500}
    assert statuses(7) == first
    assert statuses(8) != first


def test_latency_and_jitter(http: httpx.Client) -> None:
    with run_in_thread(DemoAgentConfig(latency_ms=100, jitter_ms=20, seed=3)) as agent:
        delays = [agent.state.latency_s(n) for n in range(1, 50)]
        assert all(0.08 <= d <= 0.12 for d in delays) and len(set(delays)) > 1
        started = time.perf_counter()
        ask(http, agent.url, "p")
        assert time.perf_counter() - started >= 0.08


# --- running it ----------------------------------------------------------------------------


def test_concurrent_requests_overlap() -> None:
    with run_in_thread(DemoAgentConfig(latency_ms=50)) as agent:

        async def main() -> list[int]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(f"{agent.url}/agent", json={"prompt": f"p{i}"})
                        for i in range(200)
                    )
                )
            return [r.status_code for r in responses]

        codes = asyncio.run(main())
        assert codes == [200] * 200
        assert agent.state.executions_total == 200
        # Overlap, not speed: some request arrived before an earlier one could have been
        # answered (each takes 50 ms), so the server was working on several at once.
        arrivals = sorted(r.received_at for r in agent.requests())
        assert any(later - earlier < 0.05 for earlier, later in zip(arrivals, arrivals[10:]))


def test_run_in_thread_picks_free_ports_and_stops() -> None:
    first, second = run_in_thread(), run_in_thread()
    try:
        assert first.port != second.port
        assert first.url == f"http://127.0.0.1:{first.port}"
    finally:
        first.stop()
        second.stop()
    assert not first.thread.is_alive() and not second.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{first.url}/health", timeout=1.0)


def test_stop_cuts_requests_in_flight_like_a_killed_agent() -> None:
    agent = run_in_thread()
    agent.push_faults([{"delay_s": 30}])
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(httpx.post(f"{agent.url}/agent", json={"prompt": "p"}, timeout=10))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    time.sleep(0.1)
    started = time.perf_counter()
    agent.stop()
    assert time.perf_counter() - started < 3
    thread.join(3)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_sessions_and_idempotency_keys_are_remembered_up_to_a_bound() -> None:
    """A long batch must not make the demo agent grow (and slow down) without end."""
    from agent_pipelines.demo_agent import CachedResponse, DemoAgentConfig, DemoAgentState

    state = DemoAgentState(DemoAgentConfig(memory_limit=3))
    for i in range(10):
        state.execute(state.generation, f"key-{i}", lambda s, i=i: (s.next_turn(f"session-{i}"), CachedResponse(200, b"{}", {}))[1])
    assert list(state.idempotency) == ["key-7", "key-8", "key-9"]
    assert list(state.sessions) == ["session-7", "session-8", "session-9"]
