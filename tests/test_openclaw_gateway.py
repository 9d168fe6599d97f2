"""How the real OpenClaw gateway (2026.9.6) behaves behind our fake LLM, pinned as tests.

One gateway serves the whole module (start ~25 s, first agent turn ~15 s). The first run on a
machine installs Node 24 and OpenClaw into the gateway cache (~75 s): see tests/support/openclaw.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_llm import LlmCall, RunningFakeLlm, run_fake_llm
from tests.support.openclaw import RunningOpenClaw, canonical_session_key, run_openclaw

INTERNAL_ERROR = {"error": {"message": "internal error", "type": "api_error"}}


@pytest.fixture(scope="module")
def llm() -> Iterator[RunningFakeLlm]:
    with run_fake_llm() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(llm: RunningFakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOpenClaw]:
    with run_openclaw(tmp_path_factory.mktemp("openclaw-home"), llm) as gw:
        gw.warm_up()
        yield gw


@pytest.fixture(autouse=True)
def _fast_llm(llm: RunningFakeLlm) -> Iterator[None]:
    llm.state.latency_s = 0.0
    yield
    llm.state.latency_s = 0.0


def marker() -> str:
    return uuid.uuid4().hex[:10]


def calls_with(llm: RunningFakeLlm, text: str) -> list[LlmCall]:
    """The model calls whose conversation contains `text`, in start order."""
    found = [c for c in llm.calls() if any(text in t for t in c.user_texts())]
    return sorted(found, key=lambda c: c.started_at)


def concurrently(gateway: RunningOpenClaw, requests: list[tuple[str, str | None]]) -> list[tuple[int, dict]]:
    """Send (text, session key) requests at the same instant; (status, body) in request order."""
    barrier = threading.Barrier(len(requests))
    results: list[tuple[int, dict] | None] = [None] * len(requests)

    def send(i: int, text: str, key: str | None) -> None:
        barrier.wait()
        response = gateway.chat(text, session_key=key)
        results[i] = (response.status_code, response.json())

    threads = [threading.Thread(target=send, args=(i, t, k)) for i, (t, k) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_same_session_key_continues_one_conversation(gateway: RunningOpenClaw, llm: RunningFakeLlm) -> None:
    m, key = marker(), f"conv-{marker()}"
    first = gateway.chat(f"{m} turn one", session_key=key)
    second = gateway.chat(f"{m} turn two", session_key=key)

    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl_")
    assert body["model"] == "openclaw"  # the request's `model`, echoed
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith("fake answer ")
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] > 1000  # OpenClaw's own system prompt and tools

    calls = calls_with(llm, m)
    assert len(calls) == 2
    assert calls[0].body["stream"] is True and calls[0].body["model"] == "fake-model"
    turn2 = calls[1].messages
    users = [c for c in calls[1].user_texts() if m in c]
    assert [("turn one" in u, "turn two" in u) for u in users] == [(True, False), (False, True)]
    assistants = [msg for msg in turn2 if msg["role"] == "assistant"]
    assert [str(a["content"]).strip() for a in assistants] == [choice["message"]["content"].strip()]

    transcript = gateway.transcript(key)
    assert [(t.role, t.text.strip()) for t in transcript] == [
        ("user", f"{m} turn one"),
        ("assistant", choice["message"]["content"].strip()),
        ("user", f"{m} turn two"),
        ("assistant", second.json()["choices"][0]["message"]["content"].strip()),
    ]
    session = gateway.session(key)
    assert session is not None and session["key"] == f"agent:main:{key}"


def test_session_keys_are_caller_chosen_case_insensitive_and_agent_scoped(
    gateway: RunningOpenClaw, llm: RunningFakeLlm
) -> None:
    m = marker()
    key = f"Scheduler/Task {m}:run-1"  # any header-safe text
    assert gateway.chat(f"{m} a", session_key=key).status_code == 200
    assert gateway.chat(f"{m} b", session_key=f"agent:main:{key.lower()}").status_code == 200
    assert gateway.chat(f"{m} c", session_key=key.upper()).status_code == 200
    calls = calls_with(llm, m)
    assert len(calls[-1].user_texts()) >= 3 and sum(m in t for t in calls[-1].user_texts()) == 3
    assert canonical_session_key(key) == f"agent:main:scheduler/task {m}:run-1"
    assert gateway.session(key) is not None

    for reserved in ("cron:job-1", "subagent:x", "acp:x", "agent:main:cron:job-1"):
        response = gateway.chat("nope", session_key=reserved)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_without_a_key_every_request_is_a_fresh_session_and_user_derives_one(
    gateway: RunningOpenClaw, llm: RunningFakeLlm
) -> None:
    m = marker()
    before = {s["key"] for s in gateway.sessions()}
    assert gateway.chat(f"{m} anon one").status_code == 200
    assert gateway.chat(f"{m} anon two").status_code == 200
    calls = calls_with(llm, f"{m} anon")
    assert len(calls) == 2 and not any("anon one" in t for t in calls[1].user_texts())
    new = {s["key"] for s in gateway.sessions()} - before
    assert len(new) == 2 and all(k.startswith("agent:main:openai:") for k in new)

    user = f"conv-{m}"
    assert gateway.chat(f"{m} user one", user=user).status_code == 200
    assert gateway.chat(f"{m} user two", user=user).status_code == 200
    calls = calls_with(llm, f"{m} user")
    assert any("user one" in t for t in calls[-1].user_texts())
    assert gateway.session(f"agent:main:openai-user:{user}") is not None


def test_concurrent_requests_on_one_session_are_queued_in_order(
    gateway: RunningOpenClaw, llm: RunningFakeLlm
) -> None:
    m, key = marker(), f"queue-{marker()}"
    assert gateway.chat(f"{m} opener", session_key=key).status_code == 200  # the session exists
    llm.state.latency_s = 1.0
    results = concurrently(gateway, [(f"{m} q{i}", key) for i in range(3)])
    assert [status for status, _ in results] == [200, 200, 200]

    calls = [c for c in calls_with(llm, m) if any(" q" in t for t in c.user_texts())]
    assert len(calls) == 3
    for earlier, later in zip(calls, calls[1:]):
        assert earlier.finished_at is not None and later.started_at >= earlier.finished_at
    # Each turn sees the turns queued before it: one transcript, no interleaving.
    seen = [[t for t in c.user_texts() if f"{m} q" in t] for c in calls]
    assert [len(s) for s in seen] == [1, 2, 3]
    order = [s[-1].split(f"{m} ")[-1] for s in seen]
    texts = [t.text for t in gateway.transcript(key)]
    assert texts[0::2] == [f"{m} opener"] + [f"{m} {q}" for q in order]


def test_concurrent_first_turns_on_a_new_key_can_fail_with_500(
    gateway: RunningOpenClaw, llm: RunningFakeLlm
) -> None:
    """Both requests prepare a new session; the loser gets 500 (SessionWorkStartChangedError)."""
    llm.state.latency_s = 0.5
    outcomes = []
    for _ in range(3):
        m, key = marker(), f"race-{marker()}"
        results = concurrently(gateway, [(f"{m} r0", key), (f"{m} r1", key)])
        statuses = [s for s, _ in results]
        assert 200 in statuses and set(statuses) <= {200, 500}
        assert all(body == INTERNAL_ERROR for s, body in results if s == 500)
        stored = [t.text for t in gateway.transcript(key) if t.role == "user"]
        assert sorted(stored) == sorted(f"{m} r{i}" for i, s in enumerate(statuses) if s == 200)
        outcomes.append(statuses)
        if 500 in statuses:
            break
    assert any(500 in s for s in outcomes), outcomes


def test_different_keys_run_in_parallel(gateway: RunningOpenClaw, llm: RunningFakeLlm) -> None:
    m = marker()
    llm.state.latency_s = 2.0
    results = concurrently(gateway, [(f"{m} p{i}", f"par-{m}-{i}") for i in range(3)])
    assert [s for s, _ in results] == [200, 200, 200]
    calls = calls_with(llm, m)
    assert len(calls) == 3
    assert max(c.started_at for c in calls) < min(c.finished_at or 0 for c in calls)


def test_probes_auth_and_request_errors(gateway: RunningOpenClaw) -> None:
    client = gateway.client
    assert client.get("/health").json() == {"ok": True, "status": "live"}  # no token needed
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True

    unauthorized = {"error": {"message": "Unauthorized", "type": "unauthorized"}}
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models").json() == unauthorized
    wrong = client.post("/v1/chat/completions", headers={"Authorization": "Bearer wrong"},
                        json={"model": "openclaw", "messages": [{"role": "user", "content": "x"}]})
    assert (wrong.status_code, wrong.json()) == (401, unauthorized)

    models = client.get("/v1/models", headers=gateway.headers).json()
    assert [d["id"] for d in models["data"]] == ["openclaw", "openclaw/default", "openclaw/main"]

    bad_model = gateway.chat("x", model="gpt-4")
    assert bad_model.status_code == 400
    assert bad_model.json()["error"]["message"] == "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`."
    unknown_agent = gateway.chat("x", agent_id="nobody")
    assert (unknown_agent.status_code, unknown_agent.json()["error"]["message"]) == (400, "Unknown agent 'nobody'.")


def test_streamed_response_shape(gateway: RunningOpenClaw) -> None:
    response = gateway.chat(f"{marker()} stream", session_key=f"stream-{marker()}", stream=True,
                            model="openclaw/main", stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "openclaw/main" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("fake answer ")


def test_cli_creates_a_cron_job_stored_in_sqlite(gateway: RunningOpenClaw) -> None:
    name = f"digest-{marker()}"
    job = gateway.cli_json(
        "cron", "add", "--name", name, "--cron", "30 0 9 * * 1-5", "--tz", "Europe/Berlin",
        "--message", "Summarize open tasks", "--session", "isolated", "--no-deliver",
        "--agent", "main", "--disabled", "--json",
    )
    assert job["schedule"] == {"kind": "cron", "expr": "30 0 9 * * 1-5", "tz": "Europe/Berlin"}
    assert job["enabled"] is False and job["sessionTarget"] == "isolated"
    assert job["payload"]["kind"] == "agentTurn" and job["payload"]["message"] == "Summarize open tasks"
    assert job["delivery"]["mode"] == "none"

    listed = gateway.cli_json("cron", "list", "--all", "--json")
    assert any(j["id"] == job["id"] and j["status"] == "disabled" for j in listed["jobs"])

    db = gateway.state_dir / "state" / "openclaw.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT store_key, enabled, payload_kind, job_json FROM cron_jobs "
                           "WHERE job_id = ?", (job["id"],)).fetchone()
    assert row is not None
    assert Path(row[0]) == gateway.state_dir / "cron" / "jobs.json"  # a logical key, no file
    assert row[1:3] == (0, "agentTurn") and json.loads(row[3])["schedule"] == job["schedule"]


def test_nothing_leaves_loopback_but_the_refused_clawhub_prewarm(gateway: RunningOpenClaw) -> None:
    assert all(a.startswith("CONNECT clawhub.ai:443 ") for a in gateway.egress_attempts())


def test_max_concurrent_caps_runs_across_sessions(gateway: RunningOpenClaw, llm: RunningFakeLlm) -> None:
    gateway.patch_config({"agents": {"defaults": {"maxConcurrent": 1}}})
    try:
        m = marker()
        llm.state.latency_s = 1.0
        results = concurrently(gateway, [(f"{m} g{i}", f"cap-{m}-{i}") for i in range(2)])
        assert [s for s, _ in results] == [200, 200]
        first, second = calls_with(llm, m)
        assert first.finished_at is not None and second.started_at >= first.finished_at
    finally:
        gateway.patch_config({"agents": {"defaults": {"maxConcurrent": None}}})
