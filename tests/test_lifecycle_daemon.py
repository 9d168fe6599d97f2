"""An agent that sleeps between its tasks, with a real daemon: the lifecycle starts a real demo
agent process `lead` before each due time and stops it when idle; once the daemon runs, every
scheduled execution finds it ready (no cold start); an event that arrives while it sleeps wakes it and is delivered."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from agent_pipelines.instance import instance_yaml
from agent_pipelines.local_platform import Platform, free_port, wait_until
from agent_pipelines.process_identity import is_gone, pid_of
from agent_pipelines.store import status
from tests.conftest import demo_agent_command

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(600)]


def test_the_agent_sleeps_between_tasks_and_is_ready_when_they_are_due(tmp_path: Path, demo_agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "hook-token")
    port = free_port()
    start = demo_agent_command(port)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "c.yaml").write_text(
        f"""\
agents:
  - name: sleepy
    kind: openai_chat
    model: demo-model
    base_url: "http://127.0.0.1:{port}"
    auth_env: DEMO_AGENT_TOKEN
    timeout: 5s
    lifecycle:
      command: {{start: {json.dumps(start)}, log: "{tmp_path / 'sleepy.log'}"}}
      lead: 12s
      idle_after: 4s
      min_up: 2s
      ready: {{timeout: 60s, every: 250ms}}
sources:
  - {{name: hooks, auth: {{kind: bearer, token_env: HOOK_TOKEN}}}}
tasks:
  - {{name: tick, owner: ops, agent: sleepy, prompt: "tick {{{{ due_time }}}}", schedule: {{every: 30s}}}}
  - {{name: on_hook, owner: ops, agent: sleepy, prompt: "hook {{{{ event.payload.n }}}}", events: [{{source: hooks}}]}}
"""
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
    p = Platform(home, catalog, demo_agent, tmp_path)
    try:
        ingress = p.start_ingress()
        p.start_daemon()
        store = p.store()

        def succeeded(task: str) -> list:
            return [e for e in store.executions_for_task(task, limit=100) if e.status == status.SUCCEEDED]

        def events() -> list[str]:
            return [e.event for e in store.lifecycle_events(["sleepy"])]

        # Scheduled executions with a full sleep between them (on a loaded machine the first two
        # ticks may both fall in the first waking: the one that counts comes after a sleep).
        wait_until(lambda: len(succeeded("tick")) >= 1, timeout_s=240, message=lambda: f"the first tick\n{p.daemon_logs()[-3000:]}")
        wait_until(lambda: events().count("sleep") >= 1, timeout_s=120, message=f"a sleep after it: {events()}")
        slept_at = next(e.at for e in store.lifecycle_events(["sleepy"]) if e.event == "sleep")

        def after_the_sleep() -> list:
            return [e for e in succeeded("tick") if e.sent_at is not None and e.sent_at > slept_at]

        wait_until(lambda: after_the_sleep(), timeout_s=120, message=f"a tick after the sleep: {events()}")
        history = events()
        # The start is not judged: a tick due within `lead` of the daemon's start (a loaded
        # machine starts it slowly) comes before the lifecycle sensor's first tick and wakes the
        # agent cold. From the first sleep on, every tick finds its agent woken ahead.
        first_sleep = history.index("sleep")
        assert "wake" in history[:first_sleep] and "ready" in history[:first_sleep], f"woken and ready before the first sleep: {history}"
        assert history[first_sleep : first_sleep + 3] == ["sleep", "wake", "ready"], history
        assert "cold" not in history[first_sleep:], f"a scheduled execution found its agent asleep: {store.lifecycle_events(['sleepy'])}"
        assert all(e.status == status.SUCCEEDED for e in store.executions_for_task("tick", limit=100) if e.due_time and e.due_time.timestamp() < time.time() - 10)

        # An event while it sleeps wakes it on the spot, and is delivered once it is ready.
        wait_until(lambda: store.lifecycle_states()["sleepy"].state == "asleep", timeout_s=120, message=f"asleep again: {events()}")
        process_before = [e for e in store.lifecycle_events(["sleepy"]) if e.event == "wake"]
        response = httpx.post(f"{ingress}/events/hooks", json={"type": "ping", "n": 7}, headers={"Authorization": "Bearer hook-token"}, timeout=10)
        assert response.status_code in (200, 202), response.text
        wait_until(lambda: len(succeeded("on_hook")) == 1, timeout_s=120, message=f"the event delivered: {events()}")
        cold = [e for e in store.lifecycle_events(["sleepy"]) if e.event == "cold"]
        assert cold and "on_hook" in (cold[-1].detail or ""), cold
        assert len([e for e in store.lifecycle_events(["sleepy"]) if e.event == "wake"]) > len(process_before)
    finally:
        p.stop()
        state = p.store().lifecycle_states().get("sleepy")
        if state is not None and state.process and not is_gone(state.process):
            os.killpg(pid_of(state.process), signal.SIGKILL)  # the agent process outlives the daemon
