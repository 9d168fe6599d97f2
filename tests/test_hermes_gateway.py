"""The real Hermes Agent API server (hermes-agent 0.19.0) behind the fake LLM: how it keys,
continues, isolates and fails sessions. The scheduler's Hermes adapter relies on each of these.

One server for the module (start ~5 s, its first turn ~4 s while the agent stack imports); each
test uses its own session ids and finds its own model calls by their (unique) user texts.
A missing install installs (tests/support/hermes.py: ensure_hermes), it never skips.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_llm import LlmCall
from tests.support.hermes import (
    RunningHermes,
    SwitchableFakeLlm,
    run_hermes,
    run_switchable_fake_llm,
)

MAX_CONCURRENT_RUNS = 2


@pytest.fixture(scope="module")
def llm() -> Iterator[SwitchableFakeLlm]:
    with run_switchable_fake_llm() as fake:
        yield fake


@pytest.fixture(scope="module")
def hermes(llm: SwitchableFakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHermes]:
    home = tmp_path_factory.mktemp("hermes-home")
    extra = {"gateway": {"api_server": {"max_concurrent_runs": MAX_CONCURRENT_RUNS}}}
    with run_hermes(home, llm, extra_config=extra) as server:
        yield server


@pytest.fixture(autouse=True)
def _fast_model(llm: SwitchableFakeLlm) -> None:
    llm.state.latency_s = 0.0


def tag() -> str:
    return uuid.uuid4().hex[:10]


def calls_with(llm: SwitchableFakeLlm, text: str) -> list[LlmCall]:
    """The model calls whose newest user message ends with `text` (Hermes may merge user turns)."""
    return [c for c in llm.calls() if c.last_user_text.endswith(text)]


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def dialogue(hermes: RunningHermes, session_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in hermes.transcript(session_id)]


def test_two_turns_with_one_session_id_are_one_conversation(hermes: RunningHermes, llm: SwitchableFakeLlm) -> None:
    sid, first, second = f"sched-{tag()}", f"first {tag()}", f"second {tag()}"

    r1 = hermes.chat(first, session_id=sid)
    body = r1.json()
    assert r1.status_code == 200, r1.text
    assert r1.headers["X-Hermes-Session-Id"] == sid  # a new caller-chosen id is taken as is
    assert body["object"] == "chat.completion" and body["model"] == "hermes-agent"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["usage"]["total_tokens"] > 0
    assert "hermes" not in body  # only on incomplete/failed turns

    # Turn 2 carries only the new message; with the header, earlier messages in the body are
    # ignored (history comes from state.db), so this planted one never reaches the model.
    planted = {"role": "assistant", "content": f"planted {tag()}"}
    r2 = hermes.chat([{"role": "user", "content": "ignored"}, planted, {"role": "user", "content": second}],
                     session_id=sid)
    assert answer(r2).startswith("fake answer") and "to turn 2:" in answer(r2)
    assert r2.headers["X-Hermes-Session-Id"] == sid

    (call2,) = calls_with(llm, second)
    assert [m["role"] for m in call2.messages] == ["system", "user", "assistant", "user"]
    assert call2.user_texts() == [first, second]
    assert call2.messages[2]["content"] == answer(r1)
    assert planted["content"] not in str(call2.messages)

    assert dialogue(hermes, sid) == [("user", first), ("assistant", answer(r1)), ("user", second),
                                     ("assistant", answer(r2))]
    (row,) = [s for s in hermes.sessions() if s["id"] == sid]
    assert row["source"] == "api_server" and row["message_count"] == 4
    listed = hermes.client.get(f"/api/sessions/{sid}/messages", headers=hermes.headers())
    assert listed.status_code == 200
    assert [m["content"] for m in listed.json()["data"]] == [first, answer(r1), second, answer(r2)]


def test_api_key_is_a_bearer_token_and_health_needs_none(hermes: RunningHermes) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    invalid = {"error": {"message": "Invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": hermes.api_key},
                    {"X-API-Key": hermes.api_key}):
        r = hermes.client.post("/v1/chat/completions", json=body, headers=headers)
        assert (r.status_code, r.json()) == (401, invalid), headers

    for path in ("/health", "/v1/health"):
        r = hermes.client.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok", "platform": "hermes-agent", "version": "0.19.0"}
    assert hermes.client.get("/v1/models").status_code == 401
    models = hermes.client.get("/v1/models", headers=hermes.headers())
    assert [m["id"] for m in models.json()["data"]] == ["hermes-agent"]
    assert hermes.client.get("/health/detailed").status_code == 401
    assert hermes.client.get("/health/detailed", headers=hermes.headers()).json()["status"] == "ok"


def test_session_id_header_constraints(hermes: RunningHermes, llm: SwitchableFakeLlm) -> None:
    before = len(llm.calls())
    for bad in ("a/b", "a..b", "c:x", "x" * 257):
        r = hermes.chat(f"never {tag()}", session_id=bad)
        message = "Session ID too long" if len(bad) > 256 else "Invalid session ID"
        assert (r.status_code, r.json()) == (400, {"error": {"message": message, "type": "invalid_request_error"}})
    assert len(llm.calls()) == before  # rejected before any model call

    longest = tag() + "y" * 246
    assert len(longest) == 256
    r = hermes.chat(f"longest {tag()}", session_id=longest)
    assert r.status_code == 200 and r.headers["X-Hermes-Session-Id"] == longest
    assert longest in hermes.session_ids()


def test_without_header_the_session_is_keyed_by_system_prompt_and_first_user_message(
    hermes: RunningHermes, llm: SwitchableFakeLlm
) -> None:
    first, later = f"same prompt {tag()}", f"later {tag()}"
    derived = "api-" + hashlib.sha256(f"\n{first}".encode()).hexdigest()[:16]

    r1, r2 = hermes.chat(first), hermes.chat(first)
    assert r1.headers["X-Hermes-Session-Id"] == r2.headers["X-Hermes-Session-Id"] == derived
    # Same session row, but no stored history is loaded: the model saw the repeat as a new chat.
    assert [c.user_texts() for c in calls_with(llm, first)] == [[first], [first]]
    assert [role for role, _ in dialogue(hermes, derived)] == ["user", "assistant"] * 2

    # Later turns of an OpenAI-style client (full history in the body) keep the id of turn 1.
    r3 = hermes.chat([{"role": "user", "content": first}, {"role": "assistant", "content": answer(r1)},
                      {"role": "user", "content": later}])
    assert r3.headers["X-Hermes-Session-Id"] == derived
    assert calls_with(llm, later)[0].user_texts() == [first, later]
    assert len(hermes.transcript(derived)) == 6

    # A system prompt is part of the key: the same first message starts another session.
    r4 = hermes.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": first}])
    assert r4.headers["X-Hermes-Session-Id"] == "api-" + hashlib.sha256(f"be brief\n{first}".encode()).hexdigest()[:16]


def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_turns_on_one_session_run_unserialized_and_interleave(
    hermes: RunningHermes, llm: SwitchableFakeLlm
) -> None:
    sid, a, b, c = f"busy-{tag()}", f"turn A {tag()}", f"turn B {tag()}", f"turn C {tag()}"
    answer(hermes.chat(f"warm up {tag()}"))  # the very first turn of a server is seconds slower
    llm.state.latency_s = 1.5
    results: dict[str, httpx.Response] = {}

    def send(text: str) -> None:
        results[text] = hermes.chat(text, session_id=sid)

    threads = [threading.Thread(target=send, args=(a,))]
    threads[0].start()
    # Turn A stored its user message, then called the model, which is still answering.
    wait_until(lambda: calls_with(llm, a) and dialogue(hermes, sid) == [("user", a)])
    threads.append(threading.Thread(target=send, args=(b,)))
    threads[1].start()
    wait_until(lambda: calls_with(llm, b))
    # The in-flight cap is global, not per session: a third turn (any session) is refused.
    over = hermes.chat(c, session_id=f"other-{tag()}")
    for thread in threads:
        thread.join(30)
    llm.state.latency_s = 0.0

    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    assert over.json()["error"]["type"] == "rate_limit_error"
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert calls_with(llm, c) == []

    # Neither turn was rejected or queued behind the other: B reached the model while A's
    # model call was still running ...
    (call_a,) = calls_with(llm, a)
    (call_b,) = calls_with(llm, b)
    assert call_a.finished_at is not None and call_b.started_at < call_a.finished_at
    # ... on the transcript as stored when B arrived: A's question without its answer, merged
    # with B's into one user message ...
    assert call_a.user_texts() == [a]
    assert [m["role"] for m in call_b.messages] == ["system", "user"]
    assert call_b.user_texts() == [f"{a}\n\n{b}"]
    # ... and both turns appended to the one transcript, interleaved.
    assert dialogue(hermes, sid) == [("user", a), ("user", b), ("assistant", answer(results[a])),
                                     ("assistant", answer(results[b]))]

    # The next turn replays it with the two user rows and the two answers each merged.
    after = f"after {tag()}"
    answer(hermes.chat(after, session_id=sid))
    (call,) = calls_with(llm, after)
    assert [m["role"] for m in call.messages] == ["system", "user", "assistant", "user"]
    assert call.messages[1]["content"] == f"{a}\n\n{b}"
    assert answer(results[a]) in call.messages[2]["content"]
    assert answer(results[b]) in call.messages[2]["content"]


def test_a_failed_model_call_is_http_200_with_finish_reason_error(
    hermes: RunningHermes, llm: SwitchableFakeLlm
) -> None:
    sid, text = f"fail-{tag()}", f"doomed {tag()}"
    with llm.failing(400, "model refused"):
        r = hermes.chat(text, session_id=sid)
    assert len([f for f in llm.failures if text in str(f["body"])]) == 1  # no retry on a 400

    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["choices"][0]["finish_reason"] == "error"
    assert body["choices"][0]["message"]["content"] == "HTTP 400: model refused"
    assert body["hermes"] == {"completed": False, "partial": False, "failed": True,
                              "error": "HTTP 400: model refused", "error_code": "agent_error"}
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert r.headers["X-Hermes-Completed"] == "false" and r.headers["X-Hermes-Partial"] == "false"
    assert r.headers["X-Hermes-Error"] == "HTTP 400: model refused"
    # The user message is stored, no assistant message ...
    assert dialogue(hermes, sid) == [("user", text)]
    # ... so retrying the turn under the same session id sends the prompt twice, merged.
    retried = answer(hermes.chat(text, session_id=sid))
    (call,) = calls_with(llm, text)
    assert [m["role"] for m in call.messages] == ["system", "user"]
    assert call.messages[1]["content"] == f"{text}\n\n{text}"
    assert dialogue(hermes, sid) == [("user", text), ("user", text), ("assistant", retried)]


def sse_events(hermes: RunningHermes, text: str, session_id: str) -> tuple[httpx.Response, list[Any]]:
    body = {"model": "hermes-agent", "stream": True, "messages": [{"role": "user", "content": text}]}
    with hermes.client.stream("POST", "/v1/chat/completions", json=body, headers=hermes.headers(session_id)) as r:
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return r, [json.loads(line) for line in lines[:-1]]


def test_streamed_turns_carry_the_session_header_and_fail_in_band(
    hermes: RunningHermes, llm: SwitchableFakeLlm
) -> None:
    sid, text = f"sse-{tag()}", f"streamed {tag()}"
    r, events = sse_events(hermes, text, sid)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["X-Hermes-Session-Id"] == sid
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert content.strip() == dialogue(hermes, sid)[1][1].strip()
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"]["total_tokens"] > 0

    with llm.failing(400, "model refused"):
        r, events = sse_events(hermes, f"streamed doomed {tag()}", f"sse-{tag()}")
    assert r.status_code == 200
    assert events[-1]["choices"][0]["finish_reason"] == "error"
    assert events[-1]["error"] == {"message": "HTTP 400: model refused", "type": "agent_error"}
    assert events[-1]["hermes"]["failed"] is True


def test_sessions_can_be_created_empty_under_a_chosen_id(hermes: RunningHermes) -> None:
    sid = f"made-{tag()}"
    created = hermes.client.post("/api/sessions", json={"id": sid}, headers=hermes.headers())
    assert created.status_code == 201 and created.json()["session"]["id"] == sid
    again = hermes.client.post("/api/sessions", json={"id": sid}, headers=hermes.headers())
    assert again.status_code == 409 and again.json()["error"]["code"] == "session_exists"
    assert sid in hermes.session_ids() and hermes.transcript(sid) == []
