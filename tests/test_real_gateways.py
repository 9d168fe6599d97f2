"""Sessions against the real agents: the Hermes Agent API server (PyPI `hermes-agent`) and the
OpenClaw gateway (npm `openclaw`), both on 127.0.0.1 behind a fake LLM with a slow answer.

`session: task` is one conversation: executions that overlap queue and take one turn each, in
order, under the id we chose (without that, Hermes interleaves concurrent turns into one
transcript and OpenClaw fails a second first turn). `session: isolated` is fresh every time,
even when the prompt repeats (Hermes would otherwise derive the session from the prompt).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.dispatcher import Dispatcher, Plan
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import StateStore
from tests.support.fake_llm import LlmCall, RunningFakeLlm, run_fake_llm
from tests.support.hermes import run_hermes
from tests.support.openclaw import run_openclaw

UTC = dt.timezone.utc
LLM_LATENCY_S = 1.0


def _catalog(directory: Path, kind: str, url: str, token_env: str):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "c.yaml").write_text(
        f"""\
agents:
  - {{name: gateway, kind: {kind}, base_url: "{url}", auth_env: {token_env}, timeout: 120s, max_concurrency: 8}}
tasks:
  - {{name: talk, owner: ops, agent: gateway, session: task, prompt: "Turn for {{{{ due_time.isoformat() }}}}", schedule: {{every: 1s}}}}
  - {{name: fresh, owner: ops, agent: gateway, prompt: "The same question every time.", schedule: {{every: 1s}}}}
"""
    )
    catalog = load_catalog(directory)
    assert catalog.ok, catalog.problems
    return catalog


def _run(catalog, store: StateStore, items: list[WorkItem]) -> None:
    dispatcher = Dispatcher(catalog=catalog, store=store, run_id="gateway-run", publish=lambda _p: None)
    event_loop.run(dispatcher.run(Plan(items=items)))


def _overlapping_turns(catalog, start: dt.datetime) -> list[WorkItem]:
    """Three executions of `talk` due 100 ms apart: each would start before the last answered."""
    dues = [start + dt.timedelta(milliseconds=100 * n) for n in range(3)]
    return [WorkItem(catalog.tasks["talk"], Trigger.scheduled(d), d.timestamp()) for d in dues]


def _twice_the_same_prompt(catalog, start: dt.datetime) -> list[WorkItem]:
    dues = [start, start + dt.timedelta(seconds=1)]
    return [WorkItem(catalog.tasks["fresh"], Trigger.scheduled(d), d.timestamp()) for d in dues]


def _calls_about(llm: RunningFakeLlm, marker: str) -> list[LlmCall]:
    return sorted((c for c in llm.calls() if any(marker in text for text in c.user_texts())), key=lambda c: c.started_at)


def _assert_one_turn_at_a_time(calls: list[LlmCall]) -> None:
    for earlier, later in zip(calls, calls[1:]):
        assert earlier.finished_at is not None and later.started_at >= earlier.finished_at, "turns overlapped"


@pytest.fixture
def llm() -> Iterator[RunningFakeLlm]:
    with run_fake_llm(latency_s=LLM_LATENCY_S) as running:
        yield running


def _start() -> dt.datetime:
    return dt.datetime.fromtimestamp(int(time.time()) + 2, UTC)


def test_hermes_task_session_is_one_conversation_and_isolated_is_fresh(tmp_path, llm, instance, monkeypatch) -> None:
    with run_hermes(tmp_path / "hermes", llm) as hermes:
        monkeypatch.setenv("HERMES_KEY", hermes.api_key)
        catalog = _catalog(tmp_path / "catalog", "hermes", hermes.url, "HERMES_KEY")
        store = StateStore.for_instance(instance)
        start = _start()
        _run(catalog, store, _overlapping_turns(catalog, start) + _twice_the_same_prompt(catalog, start))

        assert sorted(e.status for e in store.executions_for_task("talk")) == ["succeeded"] * 3
        transcript = hermes.transcript("agent-pipelines-talk")
        assert [m["role"] for m in transcript] == ["user", "assistant"] * 3, transcript
        prompts = [m["content"] for m in transcript if m["role"] == "user"]
        assert prompts == [f"Turn for {(start + dt.timedelta(milliseconds=100 * n)).isoformat()}" for n in range(3)]
        _assert_one_turn_at_a_time(_calls_about(llm, "Turn for"))
        last_turn = _calls_about(llm, "Turn for")[-1]
        assert sum("Turn for" in text for text in last_turn.user_texts()) == 3, "the third turn sees the two before"

        fresh_sessions = [s for s in hermes.session_ids() if s.startswith("agent-pipelines-fresh-")]
        assert len(fresh_sessions) == 2, hermes.session_ids()
        for call in _calls_about(llm, "The same question"):
            assert sum("The same question" in text for text in call.user_texts()) == 1, "an isolated session starts empty"


def test_openclaw_task_session_is_one_conversation_and_isolated_is_fresh(tmp_path, llm, instance, monkeypatch) -> None:
    with run_openclaw(tmp_path / "openclaw", llm) as gateway:
        gateway.warm_up()
        monkeypatch.setenv("OPENCLAW_TOKEN", gateway.token)
        catalog = _catalog(tmp_path / "catalog", "openclaw", gateway.url, "OPENCLAW_TOKEN")
        store = StateStore.for_instance(instance)
        start = _start()
        _run(catalog, store, _overlapping_turns(catalog, start) + _twice_the_same_prompt(catalog, start))

        talk = store.executions_for_task("talk")
        assert sorted(e.status for e in talk) == ["succeeded"] * 3, [(e.status, e.error) for e in talk]
        transcript = gateway.transcript("agent-pipelines-talk")
        assert [m.role for m in transcript] == ["user", "assistant"] * 3, transcript
        for n, message in enumerate(m for m in transcript if m.role == "user"):
            assert f"Turn for {(start + dt.timedelta(milliseconds=100 * n)).isoformat()}" in message.text
        _assert_one_turn_at_a_time(_calls_about(llm, "Turn for"))

        fresh = [e for e in store.executions_for_task("fresh")]
        assert sorted(e.status for e in fresh) == ["succeeded"] * 2
        keys = {s["key"] for s in gateway.sessions() if "agent-pipelines-fresh-" in s.get("key", "")}
        assert len(keys) == 2, [s.get("key") for s in gateway.sessions()]
        for call in _calls_about(llm, "The same question"):
            assert sum("The same question" in text for text in call.user_texts()) == 1, "an isolated session starts empty"
