"""Agents that sleep between tasks: the wake/sleep rules on a virtual clock; the command backend
starting and stopping a real demo agent process; the HTTP hook against a real server; the
Kubernetes scale calls rendered and checked against the API models; a dispatcher that finds its
agent asleep waking it and sending once it is ready."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent_pipelines.catalog.lifecycle import LifecycleSpec
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.kubernetes_config import model_problems
from agent_pipelines.lifecycle.backends import HttpBackend, KubernetesBackend, LifecycleError
from agent_pipelines.lifecycle.controller import LifecycleController, agent_hours
from agent_pipelines.lifecycle.decisions import AWAIT_LATE_DUE_S, AgentView, decide, next_due
from agent_pipelines.lifecycle.report import agent_rows
from agent_pipelines.local_platform import free_port, wait_until
from agent_pipelines.process_identity import is_gone
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.store import Claim, StateStore
from tests.conftest import TEST_TOKEN, demo_agent_command

T0 = parse_due("2026-12-02T09:00:00Z")
SPEC = LifecycleSpec(command={"start": "true"}, lead="2m", idle_after="10m", min_up="5m")


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def view(
    state: str, since: float = 0, woke: float | None = None, used: float | None = None, busy: bool = False, awaited: tuple[dt.datetime, str] | None = None
) -> AgentView:
    return AgentView(state, _at(since), _at(woke) if woke is not None else None, _at(used) if used is not None else None, busy, awaited)


# -- the rules ----------------------------------------------------------------------------------


def test_wakes_lead_before_the_next_due_time_not_sooner() -> None:
    due = (_at(3600), "daily_report")
    assert decide(SPEC, view("asleep"), _at(3600 - 121), due).action == "none"
    decision = decide(SPEC, view("asleep"), _at(3600 - 120), due)
    assert decision.action == "wake" and "daily_report" in decision.why
    assert decide(SPEC, view("asleep"), _at(10), None).action == "none"
    assert decide(SPEC, view("asleep", busy=True), _at(10), None).action == "wake", "work waiting (an event) wakes it"


def test_sleeps_only_when_idle_past_min_up_with_nothing_in_flight_or_due() -> None:
    idle = view("ready", woke=0, used=60)
    assert decide(SPEC, idle, _at(60 + 599), None).action == "none", "idle_after not reached"
    assert decide(SPEC, idle, _at(60 + 600), None).action == "sleep"
    assert decide(SPEC, view("ready", woke=0, used=60, busy=True), _at(5000), None).action == "none", "in flight"
    soon = (_at(660 + 600 + 120), "hourly")
    assert decide(SPEC, idle, _at(660), soon).action == "none", "due within lead + idle_after keeps it up"
    later = (_at(660 + 600 + 121), "hourly")
    assert decide(SPEC, idle, _at(660), later).action == "sleep"
    flappy = LifecycleSpec(command={"start": "true"}, idle_after="10s", min_up="5m")
    assert decide(flappy, view("ready", woke=0), _at(200), None).action == "none", "min_up prevents flapping"
    assert decide(flappy, view("ready", woke=0), _at(300), None).action == "sleep"


def test_a_due_time_whose_run_is_late_keeps_its_agent_up() -> None:
    late = view("ready", woke=0, awaited=(_at(700), "hourly"))
    decision = decide(SPEC, late, _at(720), None)
    assert decision.action == "none" and "hourly was due at" in decision.why and "not started" in decision.why
    assert decide(SPEC, view("ready", woke=0), _at(720), None).action == "sleep", "without it: idle past idle_after"


def test_a_wake_that_is_not_ready_in_time_fails_and_is_retried_later() -> None:
    spec = LifecycleSpec(command={"start": "true"}, ready={"timeout": "30s"})
    assert decide(spec, view("waking", woke=0), _at(31), None).action == "ready_timeout"
    assert decide(spec, view("failed", since=31), _at(40), (_at(50), "t")).action == "none", "no immediate retry"
    assert decide(spec, view("failed", since=31), _at(62), (_at(70), "t")).action == "wake"


def test_next_due_reads_the_planners_due_times(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            agents:
              - {name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9", lifecycle: {command: {start: "true"}}}
            tasks:
              - {name: daily, owner: x, agent: a, prompt: p, schedule: {cron: "0 10 * * *"}}
              - {name: half_hourly, owner: x, agent: a, prompt: p, schedule: "*/30 * * * *"}
            """
        )
    )
    catalog = load_catalog(tmp_path)
    assert catalog.ok, catalog.problems
    assert next_due(catalog.tasks.values(), _at(1), dt.timedelta(hours=2)) == (_at(1800), "half_hourly")
    assert next_due([catalog.tasks["daily"]], _at(1), dt.timedelta(minutes=30)) is None


def test_a_lifecycle_needs_exactly_one_backend(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "agents:\n  - {name: a, kind: openai_chat, model: m, base_url: 'http://127.0.0.1:9', lifecycle: {lead: 1m}}\n"
    )
    (problem,) = load_catalog(tmp_path).problems
    assert "lifecycle" in str(problem) and "exactly one backend" in str(problem)


# -- the command backend, with a real agent process ----------------------------------------------


@pytest.fixture
def managed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """A catalog whose agent is a demo agent process the lifecycle starts and stops."""
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    port = free_port()
    # The store stamps executions with the wall clock: the virtual clock starts at it.
    start_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    due = start_at + dt.timedelta(seconds=200)
    start = demo_agent_command(port)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "c.yaml").write_text(
        textwrap.dedent(
            f"""\
            agents:
              - name: sleepy
                kind: openai_chat
                model: demo-model
                base_url: "http://127.0.0.1:{port}"
                auth_env: DEMO_AGENT_TOKEN
                timeout: 5s
                lifecycle:
                  command: {{start: {json.dumps(start)}, log: "{tmp_path / 'agent.log'}"}}
                  lead: 2m
                  idle_after: 10m
                  min_up: 5m
                  ready: {{timeout: 60s}}
            tasks:
              - {{name: hourly, owner: x, agent: sleepy, prompt: p, schedule: {{every: 1h, anchor: "{due.isoformat()}"}}}}
            """
        )
    )
    catalog = load_catalog(tmp_path / "catalog")
    assert catalog.ok, catalog.problems
    store = StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")
    clock = ManualClock(start_at)
    controller = LifecycleController(catalog, store, clock)
    yield controller, store, clock, port
    state = store.lifecycle_states().get("sleepy")
    if state is not None and state.process and not is_gone(state.process):
        controller.backends["sleepy"].sleep("sleepy", state.process)


def test_the_command_backend_wakes_the_agent_before_due_and_stops_it_when_idle(managed) -> None:
    controller, store, clock, port = managed
    assert controller.tick().woken == [], "200 s before due, lead 2 m: still asleep"
    clock.advance(81)  # 119 s before the due time
    report = controller.tick()
    assert [agent for agent, _ in report.woken] == ["sleepy"]
    wait_until(lambda: controller.tick() is not None and store.lifecycle_states()["sleepy"].state == "ready", timeout_s=60, message="the agent's ready check")
    process = store.lifecycle_states()["sleepy"].process
    assert process and not is_gone(process), "the demo agent process runs"

    # In flight keeps it awake past idle_after; afterwards it sleeps and its process is gone.
    store.claim([Claim("k1", "hourly", "sleepy", "run-1", "schedule", None, "v")])
    clock.advance(1200)
    assert controller.tick().slept == [], "an execution in flight keeps it awake"
    store.release_run("run-1", "test")  # claimed -> not_sent: nothing in flight any more
    assert [agent for agent, _ in controller.tick().slept] == ["sleepy"]
    wait_until(lambda: is_gone(process), timeout_s=30, message="the agent process stopped")
    assert store.lifecycle_states()["sleepy"].state == "asleep"
    events = [(e.event) for e in store.lifecycle_events(["sleepy"])]
    assert events == ["wake", "ready", "sleep"]
    hours = agent_hours(store.lifecycle_events(["sleepy"]), clock.now())
    assert hours["sleepy"] == pytest.approx(1200 / 3600, abs=0.01), hours
    header, row = agent_rows(controller.catalog, store, clock.now())
    shown = dict(zip(header, row))
    assert (shown["lifecycle"], shown["state"], shown["wakes 24h"], shown["cold 24h"]) == ("command", "asleep", "1", "0")
    assert shown["hours up 24h"] == "0.33" and "(hourly)" in shown["next due"]


def test_a_process_that_exits_by_itself_is_noticed(managed) -> None:
    controller, store, clock, _port = managed
    clock.advance(81)
    controller.tick()
    wait_until(lambda: controller.tick() is not None and store.lifecycle_states()["sleepy"].state == "ready", timeout_s=60)
    process = store.lifecycle_states()["sleepy"].process
    controller.backends["sleepy"].sleep("sleepy", process)  # gone behind the controller's back
    controller.tick()
    assert store.lifecycle_states()["sleepy"].state in ("asleep", "waking"), "noticed, and woken again for the due time"
    assert "exited" in [e.event for e in store.lifecycle_events(["sleepy"])]


# -- the HTTP hook and the Kubernetes scale ---------------------------------------------------------


class Hooks(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
        Hooks.calls.append((self.command, self.path, body, self.headers.get("Authorization", "")))
        self.send_response(500 if self.path == "/broken" else 202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_http_backend_calls_the_wake_and_sleep_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("SANDBOX_TOKEN", "s3cret")
    try:
        spec = LifecycleSpec(
            http={"wake": {"url": f"{base}/start", "body": {"sandbox": "claw-1"}}, "sleep": {"url": f"{base}/stop"}, "auth_env": "SANDBOX_TOKEN"}
        )
        backend = HttpBackend(spec.http)
        backend.wake("claw")
        backend.sleep("claw", None)
        assert Hooks.calls == [("POST", "/start", {"sandbox": "claw-1"}, "Bearer s3cret"), ("POST", "/stop", None, "Bearer s3cret")]
        broken = HttpBackend(LifecycleSpec(http={"wake": {"url": f"{base}/broken"}, "sleep": {"url": f"{base}/stop"}}).http)
        with pytest.raises(LifecycleError, match="wake hook POST .*/broken answered 500"):
            broken.wake("claw")
    finally:
        server.shutdown()


def test_the_controller_waits_for_a_late_run_before_it_sleeps_the_agent(tmp_path: Path) -> None:
    """Seen under load: woken `lead` ahead, then slept just after the due time because the run
    carrying it had not claimed it yet, so the execution woke the agent again, cold."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    start_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    due = start_at + dt.timedelta(seconds=10)
    lifecycle = f'{{http: {{wake: {{url: "{base}/start"}}, sleep: {{url: "{base}/stop"}}}}, lead: 12s, idle_after: 4s, min_up: 2s}}'
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            f"""\
            agents:
              - {{name: late, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9", lifecycle: {lifecycle}}}
              - {{name: served, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9", lifecycle: {lifecycle}}}
            tasks:
              - {{name: late_tick, owner: x, agent: late, prompt: p, schedule: {{every: 1h, anchor: "{due.isoformat()}"}}}}
              - {{name: served_tick, owner: x, agent: served, prompt: p, schedule: {{every: 1h, anchor: "{due.isoformat()}"}}}}
            """
        )
    )
    catalog = load_catalog(tmp_path)
    assert catalog.ok, catalog.problems
    store = StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")
    clock = ManualClock(start_at)
    controller = LifecycleController(catalog, store, clock, ready_check=lambda agent: True)
    try:
        assert sorted(agent for agent, _ in controller.tick().woken) == ["late", "served"]
        key = Trigger.scheduled(due).idempotency_key("served_tick")
        store.claim([Claim(key, "served_tick", "served", "run-1", "schedule", due, "v")])
        store.release_run("run-1", "test")  # its execution came and went
        clock.advance(30)  # 20 s past the due time, both idle for 30 s
        assert [agent for agent, _ in controller.tick().slept] == ["served"], "the late run's agent stays up for it"
        clock.advance(AWAIT_LATE_DUE_S)
        assert [agent for agent, _ in controller.tick().slept] == ["late"], "a run that never comes keeps it up no longer"
        assert [e.event for e in store.lifecycle_events(["late"])] == ["wake", "ready", "sleep"]
    finally:
        server.shutdown()


class CapturingAppsApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict]] = []

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: dict) -> None:
        self.calls.append(("Deployment", namespace, name, body))

    def patch_namespaced_stateful_set_scale(self, name: str, namespace: str, body: dict) -> None:
        self.calls.append(("StatefulSet", namespace, name, body))


def test_the_kubernetes_backend_scales_between_zero_and_replicas_with_valid_bodies() -> None:
    api = CapturingAppsApi()
    for kind in ("Deployment", "StatefulSet"):
        spec = LifecycleSpec(kubernetes={"kind": kind, "name": "claw-gateway", "namespace": "agents", "replicas": 2})
        backend = KubernetesBackend(spec.kubernetes, apps_api=api)
        backend.wake("claw")
        backend.sleep("claw", None)
    assert [(kind, ns, name, body["spec"]["replicas"]) for kind, ns, name, body in api.calls] == [
        ("Deployment", "agents", "claw-gateway", 2),
        ("Deployment", "agents", "claw-gateway", 0),
        ("StatefulSet", "agents", "claw-gateway", 2),
        ("StatefulSet", "agents", "claw-gateway", 0),
    ]
    for *_, body in api.calls:
        assert model_problems(body, "V1Scale") == []
    assert model_problems({"spec": {"replica": 1}}, "V1Scale"), "a wrong body would be caught"


def test_a_batch_in_progress_keeps_its_agent_awake(tmp_path: Path, instance) -> None:
    import dagster as dg

    from sensors.agent_lifecycle import batch_agents_in_flight

    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "items.csv").write_text("id,text\n1,a\n2,b\n")
    (tmp_path / "catalog" / "c.yaml").write_text(
        textwrap.dedent(
            """\
            agents:
              - {name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9", lifecycle: {command: {start: "true"}}}
            tasks:
              - {name: score, owner: x, agent: a, prompt: "{{ item.text }}", items: {path: items.csv, id_column: id}, shards: 2}
            """
        )
    )
    catalog = load_catalog(tmp_path / "catalog")
    assert catalog.ok, catalog.problems
    assert batch_agents_in_flight(catalog, instance) == set()
    run = instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", asset_selection=frozenset({dg.AssetKey("score")}), status=dg.DagsterRunStatus.STARTED))
    assert batch_agents_in_flight(catalog, instance) == {"a"}
    instance.report_run_failed(run, "done")
    assert batch_agents_in_flight(catalog, instance) == set()


def test_the_wakes_check_the_ui_offers_runs_and_says_the_state(tmp_path: Path, instance) -> None:
    """Executed from the UI (here in process), `wakes` reports the agent's lifecycle state."""
    import dagster as dg

    from agent_pipelines.composition import build_definitions
    from agent_pipelines.scheduling.publication import agent_asset_key

    (tmp_path / "c.yaml").write_text(
        "agents:\n  - {name: a, kind: openai_chat, model: m, base_url: 'http://127.0.0.1:9', lifecycle: {command: {start: 'true'}}}\n"
    )
    defs = build_definitions(load_catalog(tmp_path))
    key = dg.AssetCheckKey(agent_asset_key("a"), "wakes")
    store = StateStore.for_instance(instance)

    def evaluate() -> dg.AssetCheckEvaluation:
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection={key})
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        (evaluation,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        return evaluation

    assert evaluate().passed, "never woken yet is not a failure"
    store.move_lifecycle("a", "failed", expect=["asleep"], event="wake_failed", detail="agent 'a': cannot start true: boom")
    failed = evaluate()
    assert not failed.passed and "cannot start" in failed.description
