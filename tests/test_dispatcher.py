"""The dispatcher against a real demo agent on 127.0.0.1 and a real SQLite store: due times sent
exactly once and never early, retries at their own time (a virtual clock, no wall-clock
asserts), workflows following each upstream execution, events as they arrive, sessions one
turn at a time, unhealthy agents left alone, and every answer settled whatever stops the run."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.scheduling.dispatcher import Dispatcher, EventWindow, Plan
from agent_pipelines.scheduling.plans import window_plan
from agent_pipelines.scheduling.publication import Publication
from agent_pipelines.scheduling.timing import format_due, parse_due
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import StateStore
from sensors.events import event_run_requests
from tests.conftest import write_catalog

UTC = dt.timezone.utc

TASKS = """\
sources:
  - {name: hooks, auth: {kind: bearer, token_env: HOOK_TOKEN}}
tasks:
  - {name: tick, owner: ops, agent: demo, prompt: "tick at {{ due_time.isoformat() }}", schedule: {every: 1s}}
  - name: pulse
    owner: ops
    agent: demo
    prompt: "pulse at {{ due_time.isoformat() }}"
    schedule: {every: 1s}
    retries: {count: 3, delay: 30s, backoff: constant, jitter: none}
  - name: bounded
    owner: ops
    agent: demo
    prompt: "bounded at {{ due_time.isoformat() }}"
    schedule: {every: 60s}
    retries: {count: 100, delay: 20s, backoff: constant, jitter: none, until: next_due}
  - {name: after_tick, owner: ops, agent: claw, depends_on: [tick], prompt: "after {{ upstream.tick }}"}
  - name: on_deploy
    owner: ops
    agent: demo
    events: [{source: hooks, type: deploy, match: {env: prod}}]
    prompt: "deploy {{ event.payload.version }} ({{ event.id }})"
  - {name: talk, owner: ops, agent: hermes, prompt: "turn at {{ due_time.isoformat() }}", session: task, schedule: {every: 1s}}
  - {name: paris, owner: ops, agent: demo, prompt: "{{ due_time.strftime('%H:%M:%S %Z') }}", schedule: {cron: "*/2 * * * * *", timezone: Europe/Paris}}
"""


@pytest.fixture
def catalog(tmp_path: Path, demo_agent):
    loaded = load_catalog(write_catalog(tmp_path / "catalog", demo_agent.url, TASKS))
    assert loaded.ok, loaded.problems
    return loaded


@pytest.fixture
def store(instance) -> StateStore:
    return StateStore.for_instance(instance)


class Running:
    """A dispatcher on its own thread, as a run's step carries it."""

    def __init__(self, dispatcher: Dispatcher, plan: Plan) -> None:
        self.dispatcher = dispatcher
        self.summary = None
        self.thread = threading.Thread(target=lambda: setattr(self, "summary", event_loop.run(dispatcher.run(plan))), daemon=True)
        self.thread.start()

    def join(self, timeout_s: float = 60.0) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the dispatcher did not finish"


def _dispatcher(catalog, store, clock=None, run_id: str = "run-1") -> tuple[Dispatcher, list[Publication]]:
    published: list[Publication] = []
    kwargs = {"clock": clock} if clock is not None else {}
    return Dispatcher(catalog=catalog, store=store, run_id=run_id, publish=published.append, **kwargs), published


def _at(seconds_from_now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(time.time() + seconds_from_now), UTC)


def _scheduled(catalog, name: str, due: dt.datetime, claim: str = "new") -> WorkItem:
    return WorkItem(catalog.tasks[name], Trigger.scheduled(due), due.timestamp(), claim=claim)  # type: ignore[arg-type]


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_due_times_fire_exactly_once_and_never_early(catalog, store, demo_agent) -> None:
    start = _at(2)
    plan = window_plan(catalog, store, start, start + dt.timedelta(seconds=3), ["tick"], dt.datetime.now(UTC))
    dispatcher, published = _dispatcher(catalog, store)
    event_loop.run(dispatcher.run(plan))
    requests = [r for r in demo_agent.requests() if r.headers["idempotency-key"].startswith("agent-pipelines:tick:")]
    assert len(requests) == 3
    for request in requests:
        due = parse_due(request.headers["idempotency-key"].split(":schedule:")[1])
        assert request.received_at >= due.timestamp(), "never before its due time"
    assert sorted(e.status for e in store.executions_for_task("tick")) == ["succeeded"] * 3
    materialized = [e for p in published for e in p.events if isinstance(e, dg.AssetMaterialization) and p.task == "tick"]
    assert len(materialized) == 3 and all(m.metadata["lateness_ms"].value >= 0 for m in materialized)

    # The same window again (a duplicated or re-executed run): every due time is claimed.
    again = window_plan(catalog, store, start, start + dt.timedelta(seconds=3), ["tick"], dt.datetime.now(UTC))
    assert again.items == []
    dispatcher, _ = _dispatcher(catalog, store, run_id="run-2")
    summary = event_loop.run(dispatcher.run(Plan(items=[_scheduled(catalog, "tick", start)])))
    assert summary.lost_claims == 1 and len(demo_agent.requests()) == 6


def test_due_times_before_a_task_existed_or_past_their_grace_are_not_sent(catalog, tmp_path) -> None:
    fresh = StateStore.for_url(f"sqlite:///{tmp_path / 'fresh.db'}")
    now = dt.datetime.now(UTC)
    first_seen = now + dt.timedelta(seconds=2)
    fresh.register_tasks(["tick"], first_seen)
    plan = window_plan(catalog, fresh, now - dt.timedelta(seconds=30), now + dt.timedelta(seconds=5), ["tick"], now)
    assert plan.items and all(item.trigger.due_time >= first_seen for item in plan.items)
    fresh.register_tasks(["pulse"], now - dt.timedelta(days=1))
    start = now - dt.timedelta(seconds=300)
    late = window_plan(catalog, fresh, start, start + dt.timedelta(seconds=3), ["pulse"], now)
    assert late.items == [], "past its 60 s grace: the misfire policy decides"


def test_cron_due_times_render_in_the_task_time_zone(catalog, store, demo_agent) -> None:
    start = _at(1)
    plan = window_plan(catalog, store, start, start + dt.timedelta(seconds=3), ["paris"], dt.datetime.now(UTC))
    dispatcher, _ = _dispatcher(catalog, store)
    event_loop.run(dispatcher.run(plan))
    for request in demo_agent.requests():
        due = parse_due(request.headers["idempotency-key"].split(":schedule:")[1])
        assert due.second % 2 == 0
        assert request.body["messages"][-1]["content"] == due.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).strftime("%H:%M:%S %Z")


def test_every_upstream_execution_is_followed_by_its_downstream_reading_exactly_it(catalog, store, demo_agent) -> None:
    start = _at(1)
    plan = window_plan(catalog, store, start, start + dt.timedelta(seconds=3), ["tick", "after_tick"], dt.datetime.now(UTC))
    dispatcher, _ = _dispatcher(catalog, store)
    event_loop.run(dispatcher.run(plan))
    ticks = {e.idempotency_key: e for e in store.executions_for_task("tick")}
    afters = store.executions_for_task("after_tick")
    assert len(ticks) == 3 and len(afters) == 3, "one downstream execution per upstream execution"
    outputs = store.results([*ticks, *(a.idempotency_key for a in afters)])
    for after in afters:
        (upstream_key,) = after.upstream.values()
        assert after.idempotency_key == Trigger.after(upstream_key).idempotency_key("after_tick")
        assert outputs[after.idempotency_key].prompt == f"after {outputs[upstream_key].output}"
        assert after.sent_at >= ticks[upstream_key].answered_at, "it left after its upstream answered"


def test_a_retry_leaves_at_its_own_delay(catalog, store, demo_agent) -> None:
    due = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    clock = ManualClock(due - dt.timedelta(seconds=5))
    dispatcher, published = _dispatcher(catalog, store, clock)
    demo_agent.push_faults([{"status": 503}])
    running = Running(dispatcher, Plan(items=[_scheduled(catalog, "pulse", due)]))
    clock.set(due.timestamp())
    _wait_for(lambda: store.get_execution(_key("pulse", due)) is not None and store.get_execution(_key("pulse", due)).status == "retrying")
    retrying = store.get_execution(_key("pulse", due))
    assert retrying.next_attempt_at == due + dt.timedelta(seconds=30)
    clock.set(due.timestamp() + 29.5)
    time.sleep(0.3)
    assert len(demo_agent.requests()) == 1, "not before its delay"
    clock.set(due.timestamp() + 30)
    running.join()
    assert len(demo_agent.requests()) == 2
    assert store.get_execution(_key("pulse", due)).status == "succeeded"
    checks = [e for p in published for e in p.events if isinstance(e, dg.AssetCheckEvaluation)]
    assert [c.passed for c in checks] == [False, True], "the check says retrying, then succeeded"


def test_an_outage_shorter_than_the_deadline_loses_nothing_and_a_longer_one_says_why(catalog, store, demo_agent) -> None:
    due = dt.datetime.now(UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    clock = ManualClock(due - dt.timedelta(seconds=2))
    dispatcher, _ = _dispatcher(catalog, store, clock)
    demo_agent.push_faults([{"status": 503}] * 2)  # a 40 s outage: 20 s + 20 s, then up
    plan = window_plan(catalog, store, due, due + dt.timedelta(seconds=1), ["bounded"], clock.now())
    running = Running(dispatcher, plan)
    _advance_through_retries(clock, store, demo_agent, _key("bounded", due), due, attempts=3)
    running.join()
    assert store.get_execution(_key("bounded", due)).status == "succeeded"

    demo_agent.reset()
    later = due + dt.timedelta(minutes=1)
    clock.set(later.timestamp() - 2)
    demo_agent.push_faults([{"status": 503}] * 5)  # down for longer than until the next due time
    dispatcher, _ = _dispatcher(catalog, store, clock, run_id="run-2")
    running = Running(dispatcher, window_plan(catalog, store, later, later + dt.timedelta(seconds=1), ["bounded"], clock.now()))
    _advance_through_retries(clock, store, demo_agent, _key("bounded", later), later, attempts=3)
    running.join()
    gave_up = store.get_execution(_key("bounded", later))
    assert gave_up.status == "failed" and "deadline" in gave_up.reason


def test_events_are_picked_up_while_the_run_waits(catalog, store, demo_agent) -> None:
    window = (_at(1), _at(4))
    inserted: dict[str, float] = {}

    def post_events() -> None:
        time.sleep(2.0)
        for version, env in (("1.2.3", "prod"), ("1.2.4", "staging")):
            event, _ = store.insert_event(event_id=f"hooks:{version}", source="hooks", type="deploy", payload={"version": version, "env": env})
            inserted[event.event_id] = time.time()

    poster = threading.Thread(target=post_events)
    poster.start()
    dispatcher, published = _dispatcher(catalog, store)
    event_loop.run(dispatcher.run(Plan(carried=["on_deploy"], events=EventWindow(*window, ("on_deploy",)), busy_until=window[1].timestamp())))
    poster.join()
    (request,) = demo_agent.requests()  # staging does not match
    assert request.body["messages"][-1]["content"] == "deploy 1.2.3 (hooks:1.2.3)"
    assert request.received_at >= inserted["hooks:1.2.3"]
    (materialization,) = [e for p in published for e in p.events if isinstance(e, dg.AssetMaterialization)]
    assert materialization.metadata["event_id"].value == "hooks:1.2.3"
    assert materialization.tags["agent_pipelines/trigger"] == "event"
    requests, _ = event_run_requests(catalog, store, 0, dt.datetime.now(UTC) + dt.timedelta(seconds=60))
    assert requests == [], "the safety net sees the event as handled"


def test_a_task_session_takes_one_turn_at_a_time(catalog, store, tmp_path) -> None:
    from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread

    with run_in_thread(DemoAgentConfig(token="test-token", latency_ms=400)) as slow:
        slow_catalog = load_catalog(write_catalog(tmp_path / "slow", slow.url, TASKS))
        due = _at(2)
        items = [_scheduled(slow_catalog, "talk", due + dt.timedelta(seconds=s)) for s in (0, 0.1, 0.2)]  # overlapping turns
        items = [WorkItem(i.task, Trigger.scheduled(due + dt.timedelta(seconds=n * 0.1)), i.fire_at + n * 0.1) for n, i in enumerate(items)]
        dispatcher, _ = _dispatcher(slow_catalog, store)
        event_loop.run(dispatcher.run(Plan(items=items)))
        turns = sorted(store.executions_for_task("talk"), key=lambda e: e.sent_at)
        assert len(turns) == 3
        for earlier, later in zip(turns, turns[1:]):
            assert later.sent_at >= earlier.answered_at, "a turn starts after the previous one answered"
        assert {r.headers["x-hermes-session-id"] for r in slow.requests()} == {"agent-pipelines-talk"}


def test_cancelling_the_dispatcher_while_it_records_settles_every_answer(catalog, store, demo_agent, monkeypatch) -> None:
    """The recorder writes in its own thread: an answer handed over is never lost."""
    original = store.settle
    writes = threading.Event()

    def slow_settle(settlements) -> None:
        writes.set()
        time.sleep(0.5)
        original(settlements)

    monkeypatch.setattr(store, "settle", slow_settle)
    due = _at(1)
    dispatcher, _ = _dispatcher(catalog, store)
    items = [_scheduled(catalog, "tick", due + dt.timedelta(seconds=s)) for s in range(3)]

    async def run_then_cancel() -> None:
        import asyncio

        task = asyncio.ensure_future(dispatcher.run(Plan(items=items)))
        while not writes.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    event_loop.run(run_then_cancel())
    answered = {r.headers["idempotency-key"] for r in demo_agent.requests()}
    assert answered, "something was answered before the cancel"
    states = store.statuses(list(answered))
    assert states == {key: "succeeded" for key in answered}, "every answer that came back is recorded"


class _EventLogDown(logging.Handler):
    """Dagster's handler of `context.log` while its database is down: it raises from the log call."""

    def __init__(self, down: threading.Event) -> None:
        super().__init__()
        self.down = down

    def emit(self, record: logging.LogRecord) -> None:
        if self.down.is_set():
            raise sa.exc.OperationalError("INSERT INTO event_logs", {}, Exception("connection refused"))


def test_answers_are_recorded_after_an_outage_in_which_the_runs_log_raised_too(catalog, store, demo_agent, monkeypatch, caplog) -> None:
    """In a PostgreSQL restart both the store and the run's log (Dagster's event log, same
    database) fail: the recorder keeps the answers and records them once the store is back;
    what it wanted to log goes to stderr instead of killing it."""
    down = threading.Event()
    run_log = logging.getLogger(f"test-run-log-{id(down)}")
    run_log.propagate = False
    run_log.addHandler(_EventLogDown(down))
    original = store.settle
    failures: list[int] = []

    def settle_unless_down(settlements) -> None:
        if down.is_set():
            failures.append(len(settlements))
            if len(failures) >= 2:
                down.clear()  # the database is back after two tries
            raise sa.exc.OperationalError("UPDATE executions", {}, Exception("connection refused"))
        original(settlements)

    monkeypatch.setattr(store, "settle", settle_unless_down)
    due = _at(1)
    items = [_scheduled(catalog, "tick", due + dt.timedelta(seconds=s)) for s in range(2)]
    dispatcher = Dispatcher(catalog=catalog, store=store, run_id="run-1", publish=lambda _p: None, log=run_log)
    down.set()
    with caplog.at_level(logging.ERROR, logger="agent_pipelines.run"):
        running = Running(dispatcher, Plan(items=items))
        running.join()

    keys = [item.key for item in items]
    assert len(failures) == 2, "the store failed while the database was down"
    assert store.statuses(keys) == {key: "succeeded" for key in keys}, "every answer is recorded once the store is back"
    lost_lines = [r.getMessage() for r in caplog.records if r.name == "agent_pipelines.run"]
    assert any("could not record" in line and "not in the run's log" in line for line in lost_lines), lost_lines


def test_a_stopped_run_sends_nothing_early_and_says_what_became_of_each_execution(catalog, store, demo_agent) -> None:
    from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread

    with run_in_thread(DemoAgentConfig(token="test-token", latency_ms=3000)) as slow:
        slow_catalog = load_catalog(write_catalog(Path(str(catalog.root) + "_slow"), slow.url, TASKS))
        due = _at(1)
        dispatcher, _ = _dispatcher(slow_catalog, store)
        items = [_scheduled(slow_catalog, "tick", due), _scheduled(slow_catalog, "tick", due + dt.timedelta(seconds=30))]
        running = Running(dispatcher, Plan(items=items))
        _wait_for(lambda: len(slow.requests()) == 1)
        dispatcher.stop(grace_s=0.2)
        running.join()
        assert len(slow.requests()) == 1, "the later due time was not sent early"
        in_flight = store.get_execution(_key("tick", due))
        assert in_flight.status == "unknown" and "may have acted" in in_flight.reason
        assert store.get_execution(_key("tick", due + dt.timedelta(seconds=30))) is None, "never claimed: the scheduler decides"


def test_an_agent_refusing_credentials_is_marked_unhealthy_skipped_and_probed(catalog, store, demo_agent, monkeypatch) -> None:
    monkeypatch.setenv("DEMO_AGENT_TOKEN", "wrong")
    clock = ManualClock(_at(1).timestamp() - 1)
    dispatcher, published = _dispatcher(catalog, store, clock)
    base = _at(1)
    items = [_scheduled(catalog, "tick", base + dt.timedelta(seconds=s)) for s in range(5)]
    running = Running(dispatcher, Plan(items=items))
    for s in range(5):
        clock.set(base.timestamp() + s)
        _wait_for(lambda s=s: len([e for e in store.executions_for_task("tick") if e.status in ("failed", "skipped")]) == s + 1)
    running.join()
    executions = sorted(store.executions_for_task("tick"), key=lambda e: e.due_time)
    assert [e.status for e in executions] == ["failed"] * 3 + ["skipped"] * 2
    assert "DEMO_AGENT_TOKEN" in executions[0].error, "a 401 names the variable to fix"
    assert "unhealthy" in executions[3].reason
    assert len(demo_agent.requests()) == 3, "not hammered once unhealthy"
    health = [e for p in published for e in p.events if isinstance(e, dg.AssetCheckEvaluation) and e.check_name == "healthy"]
    assert [h.passed for h in health] == [False]

    monkeypatch.setenv("DEMO_AGENT_TOKEN", "test-token")  # rotated: read at the next request, no restart
    sick = store.agent_health(["demo"])["demo"]
    clock.set(sick.next_probe_at.timestamp())
    dispatcher, published = _dispatcher(catalog, store, clock, run_id="run-2")
    later = dt.datetime.fromtimestamp(int(clock.time()) + 1, UTC)
    running = Running(dispatcher, Plan(items=[_scheduled(catalog, "tick", later)]))
    clock.set(later.timestamp())
    running.join()
    assert store.get_execution(_key("tick", later)).status == "succeeded", "probed, healthy again, sent"
    assert store.agent_health(["demo"])["demo"].healthy


def test_a_rotated_token_file_is_used_without_a_restart(tmp_path, store, demo_agent) -> None:
    token = tmp_path / "token"
    token.write_text("wrong\n")
    extra = f"""\
- name: filed
  kind: openai_chat
  base_url: {demo_agent.url}
  auth_file: {token}
  model: demo-model
"""
    tasks = "tasks:\n  - {name: uses_file, owner: ops, agent: filed, prompt: p, schedule: {every: 1s}, retries: {count: 0}}\n"
    catalog = load_catalog(write_catalog(tmp_path / "c", demo_agent.url, tasks, extra))
    assert catalog.ok, catalog.problems
    first = _at(1)
    dispatcher, _ = _dispatcher(catalog, store)
    event_loop.run(dispatcher.run(Plan(items=[_scheduled(catalog, "uses_file", first)])))
    failed = store.get_execution(_key("uses_file", first))
    assert failed.status == "failed" and str(token) in failed.error
    token.write_text("test-token\n")
    second = _at(1)
    dispatcher, _ = _dispatcher(catalog, store, run_id="run-2")
    event_loop.run(dispatcher.run(Plan(items=[_scheduled(catalog, "uses_file", second)])))
    assert store.get_execution(_key("uses_file", second)).status == "succeeded"


def test_window_runs_publish_each_result_and_stay_green_when_a_task_fails(catalog, instance, demo_agent) -> None:
    defs = build_definitions(catalog)
    store = StateStore.for_instance(instance)
    store.register_tasks(list(catalog.tasks), dt.datetime(2020, 1, 1, tzinfo=UTC))
    demo_agent.push_faults([{"status": 400}])
    start = _at(1)
    end = start + dt.timedelta(seconds=2)
    result = defs.resolve_job_def("scheduled_tasks_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"send_scheduled_tasks": {"config": {"window_start": format_due(start), "window_end": format_due(end), "tasks": ["tick"]}}}},
    )
    assert result.success, "a failing task is not a failing run"
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert sorted(c.passed for c in checks if c.asset_key == dg.AssetKey("tick")) == [False, True]
    records = instance.fetch_materializations(dg.AssetKey("tick"), limit=10).records
    assert len(records) == 1 and records[0].run_id == result.run_id, "which run carried it"
    assert instance.get_run_by_id(result.run_id).tags["agent_pipelines/executions"] == "1 failed, 2 succeeded"
    assert store.unpublished(dt.datetime.now(UTC) + dt.timedelta(seconds=1)) == [], "every result reached Dagster"
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(dg.AssetKey("tick"), "succeeded")])
    assert latest, "the check's latest evaluation is in the instance"


def _advance_through_retries(clock: ManualClock, store: StateStore, agent, key: str, due: dt.datetime, attempts: int) -> None:
    """Move the virtual clock to each attempt's time once the one before has been recorded."""
    clock.set(due.timestamp())
    for attempt in range(1, attempts + 1):
        _wait_for(lambda a=attempt: len(agent.requests()) == a)
        if attempt == attempts:
            return
        _wait_for(lambda: (e := store.get_execution(key)) is not None and e.status == "retrying" and e.attempts == attempt)
        clock.set(store.get_execution(key).next_attempt_at.timestamp())


def _key(task: str, due: dt.datetime) -> str:
    return Trigger.scheduled(due).idempotency_key(task)


@pytest.fixture(autouse=True)
def _registered(request) -> Iterator[None]:
    """Tasks exist from long ago unless a test says otherwise."""
    if "store" in request.fixturenames:
        request.getfixturevalue("store").register_tasks(
            ["tick", "pulse", "bounded", "after_tick", "on_deploy", "talk", "paris"], dt.datetime(2020, 1, 1, tzinfo=UTC)
        )
    yield
