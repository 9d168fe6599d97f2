"""`task_scheduler_sensor`'s logic with a controlled clock and a real SQLite store: window runs
planned once, misfire policies applied exactly, stale claims reclaimed, run-now launched."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.factory import build_definitions
from agent_pipelines.grouping import find_workflows, group_tasks
from agent_pipelines.planning import LEAD, WINDOW, worst_case_seconds
from agent_pipelines.store import Claim, StateStore
from agent_pipelines.store.schema import run_heartbeats
from agent_pipelines.timing import parse_due
from agent_pipelines.triggers import Trigger
from sensors.scheduler import Scheduler, SchedulerCursor

CATALOG = """\
agents:
  - {name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}
sources:
  - {name: hooks, auth: {kind: bearer, token_env: HOOK_TOKEN}}
tasks:
  - {name: every_20s, owner: x, agent: a, prompt: p, schedule: {every: 20s}}
  - {name: seconds_cron, owner: x, agent: a, prompt: p, schedule: "*/30 * * * * *"}
  - {name: daily, owner: x, agent: a, prompt: p, schedule: {cron: "0 9 * * *", timezone: Europe/Paris}}
  - {name: once, owner: x, agent: a, prompt: p, schedule: {at: "2026-11-23T12:01:10Z"}}
  - {name: "off", owner: x, agent: a, prompt: p, schedule: {every: 20s}, enabled: false}
  - {name: listener, owner: x, agent: a, prompt: "{{ event.type }}", events: [{source: hooks}]}
  - {name: follow_up, owner: x, agent: a, prompt: "{{ upstream.every_20s }}", depends_on: [every_20s]}
  - name: skip_policy
    owner: x
    agent: a
    prompt: p
    schedule: {every: 60s}
    misfire: {policy: skip}
  - name: latest_policy
    owner: x
    agent: a
    prompt: p
    schedule: {every: 60s}
    misfire: {policy: latest}
  - name: all_policy
    owner: x
    agent: a
    prompt: p
    schedule: {every: 60s}
    misfire: {policy: all, max_catchup: 2}
"""


@pytest.fixture
def catalog(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(textwrap.dedent(CATALOG))
    loaded = load_catalog(tmp_path)
    assert loaded.ok, loaded.problems
    return loaded


@pytest.fixture
def store(instance) -> StateStore:
    return StateStore.for_instance(instance)


def _scheduler(catalog, store) -> Scheduler:
    groups = group_tasks(catalog, find_workflows(catalog))
    op_of = {name: g.op_name for g in groups for name in g.tasks}
    unit_of = {n: ("every_20s" if n in ("every_20s", "follow_up") else op_of[n]) for n in catalog.tasks}
    return Scheduler(catalog, store, unit_of, lambda task, v: {"ops": {op_of[task]: {"config": {task: {"variables": v}}}}})


def _selection(request: dg.RunRequest) -> list[str]:
    return sorted(k.to_user_string() for k in request.asset_selection)


def test_windows_are_planned_ahead_once(catalog, store, instance) -> None:
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:10Z"), instance)
    by_key = {r.run_key: r for r in requests}
    assert sorted(by_key) == ["window:2026-11-23T12:00:00.000Z:0", "window:2026-11-23T12:01:00.000Z:0"]
    first = by_key["window:2026-11-23T12:00:00.000Z:0"]
    # due tasks, the unscheduled downstream of a due task, and the event listener; never `off`
    assert _selection(first) == [
        "all_policy", "every_20s", "follow_up", "latest_policy", "listener", "seconds_cron", "skip_policy",
    ]
    assert first.tags["agent_pipelines/window_start"] == "2026-11-23T12:00:00.000Z"
    assert first.tags["agent_pipelines/window_end"] == "2026-11-23T12:01:00.000Z"
    # run monitoring fails a window run killed with its machine once it outlives every retry
    lead_and_window = (LEAD + WINDOW).total_seconds()
    slowest = max(worst_case_seconds(catalog, catalog.tasks[n]) for n in _selection(first))
    assert lead_and_window + slowest < int(first.tags["dagster/max_runtime"]) < 24 * 3600
    assert "once" in _selection(by_key["window:2026-11-23T12:01:00.000Z:0"])
    assert cursor.planned_until == parse_due("2026-11-23T12:02:00Z")

    again, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:15Z"), instance)
    assert again == [], "a window is requested once"
    later, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:50Z"), instance)
    assert [r.run_key for r in later if ":rescue" not in r.run_key] == ["window:2026-11-23T12:02:00.000Z:0"]


def test_stranded_due_times_get_rescue_runs(catalog, store, instance) -> None:
    """Nothing claimed the due times of 12:00:00 (their run died): replacement runs are
    requested for that window and the windows planned after it, once each."""
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    _, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:00.5Z"), instance)
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:22Z"), instance)
    rescues = {r.run_key: r for r in requests if ":rescue" in r.run_key}
    assert sorted(rescues) == ["window:2026-11-23T12:00:00.000Z:0:rescue", "window:2026-11-23T12:01:00.000Z:0:rescue"]
    first = rescues["window:2026-11-23T12:00:00.000Z:0:rescue"]
    assert first.tags["agent_pipelines/window_start"] == "2026-11-23T12:00:00.000Z"
    assert first.tags["agent_pipelines/rescue"] == "true"
    assert {"every_20s", "seconds_cron", "skip_policy"} <= set(_selection(first))


def test_a_window_run_still_in_the_queue_is_not_rescued(catalog, store, instance) -> None:
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    planned, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:00.5Z"), instance)
    job = build_definitions(catalog).resolve_job_def("agent_tasks_job")
    run = instance.create_run_for_job(job, tags=planned[0].tags)  # created, not started yet
    assert run.status == dg.DagsterRunStatus.NOT_STARTED
    requests, _ = scheduler.tick(cursor, parse_due("2026-11-23T12:00:22Z"), instance)
    assert not [r for r in requests if ":rescue" in r.run_key]


def _key(task: str, due: str) -> str:
    return Trigger.scheduled(parse_due(due)).idempotency_key(task)


def _reconcile_tick(catalog, store, instance, cursor, now: str):
    requests, cursor = _scheduler(catalog, store).tick(cursor, parse_due(now), instance)
    catchups = sorted(
        f"{r.tags['agent_pipelines/task']} {r.tags['agent_pipelines/due_time'][11:16]}"
        for r in requests
        if r.run_key.startswith("catchup:") and r.tags["agent_pipelines/task"].endswith("_policy")
    )
    return catchups, cursor


def _start_catchup_runs(store: StateStore) -> None:
    for execution in store.executions_with_status("catchup"):
        assert store.take_over_catchup(execution.idempotency_key, "catchup-run")


def _quiet_cursor(reconciled_until: str) -> SchedulerCursor:
    return SchedulerCursor(
        planned_until=parse_due("2026-11-23T13:00:00Z"),  # keep planning out of these tests
        reconciled_until=parse_due(reconciled_until),
        rescued_until=parse_due("2026-11-23T13:00:00Z"),
    )


def test_misfire_policies_after_an_outage(catalog, store, instance) -> None:
    """Due every minute; nothing fired from 12:00 to 12:04 (one outage)."""
    catchups, cursor = _reconcile_tick(catalog, store, instance, _quiet_cursor("2026-11-23T12:00:00Z"), "2026-11-23T12:05:00.5Z")
    # until = now - 60 s grace = 12:04:00.5: due times 12:00 .. 12:04 are reconciled
    assert catchups == ["all_policy 12:03", "all_policy 12:04", "latest_policy 12:04"]
    statuses = store.statuses([_key(t, f"2026-11-23T12:0{m}:00Z") for t in ("skip_policy", "latest_policy", "all_policy") for m in range(5)])
    assert set(statuses.values()) == {"missed", "catchup"}
    assert statuses[_key("skip_policy", "2026-11-23T12:04:00Z")] == "missed"
    assert statuses[_key("latest_policy", "2026-11-23T12:03:00Z")] == "missed"
    assert statuses[_key("all_policy", "2026-11-23T12:02:00Z")] == "missed"
    assert cursor.reconciled_until == parse_due("2026-11-23T12:04:00.5Z")

    # The next tick re-requests the same catch-up runs (deduplicated by run key) until they start.
    again, _ = _scheduler(catalog, store).tick(cursor, parse_due("2026-11-23T12:05:05Z"), instance)
    assert len([r for r in again if r.run_key.startswith("catchup:")]) == 3


def test_one_outage_seen_over_several_ticks_is_one_episode(catalog, store, instance) -> None:
    cursor = _quiet_cursor("2026-11-23T12:00:00Z")
    first, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:03:00.5Z")
    assert first == ["all_policy 12:01", "all_policy 12:02", "latest_policy 12:02"]
    _start_catchup_runs(store)
    second, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:05:00.5Z")
    assert second == [], "still the same outage: its catch-up budget is spent"
    # 12:05 fires normally, which ends the episode; 12:06 is missed again: a new episode.
    fired = [_key(t, "2026-11-23T12:05:00Z") for t in ("latest_policy", "all_policy")]
    store.claim([Claim(k, k.split(":")[1], "a", "r", "schedule", parse_due("2026-11-23T12:05:00Z"), "v") for k in fired])
    for key in fired:
        store.begin_attempt(idempotency_key=key, task=key.split(":")[1], agent="a", run_id="r", trigger="schedule", due_time=None, prompt_version="v")
    _start_catchup_runs(store)
    third, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:07:00.5Z")
    assert third == ["all_policy 12:06", "latest_policy 12:06"]


def test_a_claim_whose_run_died_goes_to_the_misfire_policy(catalog, store, instance) -> None:
    due = "2026-11-23T12:00:00Z"
    store.claim([Claim(_key("latest_policy", due), "latest_policy", "a", "dead-run", "schedule", parse_due(due), "v")])
    requests, _ = _scheduler(catalog, store).tick(_quiet_cursor("2026-11-23T11:59:30Z"), parse_due("2026-11-23T12:01:00.5Z"), instance)
    assert [r.tags["agent_pipelines/due_time"] for r in requests if r.tags.get("agent_pipelines/task") == "latest_policy"] == [
        "2026-11-23T12:00:00.000Z"
    ]
    assert store.statuses([_key("latest_policy", due)])[_key("latest_policy", due)] == "catchup"


def test_run_now_requests_are_launched_once(catalog, store, instance, tmp_path) -> None:
    request_id = store.add_run_request("daily", requested_by="alice", variables={})
    cursor = _quiet_cursor("2026-11-23T12:00:00Z")
    requests, cursor = _scheduler(catalog, store).tick(cursor, parse_due("2026-11-23T12:00:01Z"), instance)
    (run_now,) = [r for r in requests if r.run_key == f"run-now:{request_id}"]
    assert _selection(run_now) == ["daily"] and run_now.tags["agent_pipelines/trigger"] == "manual"
    # once a run carrying the request id exists, the request is done
    defs = build_definitions(catalog)
    job = defs.resolve_job_def("agent_tasks_job")
    instance.create_run_for_job(job, asset_selection=frozenset({dg.AssetKey("daily")}), tags=run_now.tags)
    _scheduler(catalog, store).tick(cursor, parse_due("2026-11-23T12:00:06Z"), instance)
    assert store.pending_run_requests() == []


def _now_quietly() -> tuple[SchedulerCursor, dt.datetime]:
    """The real time (runs' timestamps are real), with planning and misfires already done."""
    now = dt.datetime.now(dt.timezone.utc)
    return SchedulerCursor(planned_until=now + dt.timedelta(days=1), reconciled_until=now, rescued_until=now), now


def _silent_run(instance, store: StateStore, run_tags: dict[str, str]) -> dg.DagsterRun:
    """A STARTED run whose process is gone: its last heartbeat is minutes old."""
    run = instance.add_run(dg.DagsterRun(job_name="agent_tasks_job", status=dg.DagsterRunStatus.STARTED, tags=run_tags))
    store.beat(run.run_id)
    with store.engine.begin() as conn:
        conn.execute(sa.update(run_heartbeats).where(run_heartbeats.c.run_id == run.run_id).values(beat_at=parse_due("2026-11-23T11:00:00Z")))
    return run


def test_a_dead_catchup_run_is_failed_and_its_catchup_goes_to_a_new_run(catalog, store, instance) -> None:
    due = parse_due("2026-11-23T11:58:00Z")
    key = Trigger.scheduled(due).idempotency_key("all_policy")
    run_tags = {
        "agent_pipelines/task": "all_policy",
        "agent_pipelines/due_time": "2026-11-23T11:58:00.000Z",
        "agent_pipelines/catchup": "true",
        "agent_pipelines/trigger": "schedule",
    }
    dead = _silent_run(instance, store, run_tags)
    store.claim([Claim(key, "all_policy", "a", dead.run_id, "schedule", due, "v", status="claimed")])
    alive = instance.add_run(dg.DagsterRun(job_name="agent_tasks_job", status=dg.DagsterRunStatus.STARTED, tags=run_tags))
    store.beat(alive.run_id)

    scheduler = _scheduler(catalog, store)
    requests, _ = scheduler.tick(*_now_quietly(), instance)

    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED, "a beating run lives"
    assert [(r.run_id, [e.idempotency_key for e in held]) for r, held in scheduler.buried] == [(dead.run_id, [key])]
    assert store.get_execution(key).status == "catchup"
    # the alive run carries the same catch-up: nothing is requested while it is in flight
    assert not [r for r in requests if r.run_key.startswith("catchup:")]
    instance.report_run_failed(instance.get_run_by_id(alive.run_id), "gone too")
    requests, _ = scheduler.tick(*_now_quietly(), instance)
    assert [r.run_key for r in requests if r.run_key.startswith("catchup:")] == [f"catchup:{key}:2"]


def test_catchups_stop_after_three_runs_that_sent_nothing(catalog, store, instance) -> None:
    due = parse_due("2026-11-23T11:58:00Z")
    key = Trigger.scheduled(due).idempotency_key("all_policy")
    store.claim([Claim(key, "all_policy", "a", "", "schedule", due, "v", status="catchup")])
    run_tags = {"agent_pipelines/task": "all_policy", "agent_pipelines/due_time": "2026-11-23T11:58:00.000Z", "agent_pipelines/catchup": "true"}
    for _ in range(3):
        instance.add_run(dg.DagsterRun(job_name="agent_tasks_job", status=dg.DagsterRunStatus.FAILURE, tags=run_tags))
    requests, _ = _scheduler(catalog, store).tick(*_now_quietly(), instance)
    assert not [r for r in requests if r.run_key.startswith("catchup:")]
    execution = store.get_execution(key)
    assert (execution.status, execution.failure_kind) == ("failed", "catchup_failed")


def test_a_silent_window_run_fails_its_in_flight_request(catalog, store, instance) -> None:
    dead = _silent_run(instance, store, {"agent_pipelines/trigger": "schedule", "agent_pipelines/window_start": "2026-11-23T12:00:00.000Z"})
    store.begin_attempt(idempotency_key="k", task="every_20s", agent="a", run_id=dead.run_id, trigger="schedule", due_time=None, prompt_version="v")
    _scheduler(catalog, store).tick(*_now_quietly(), instance)
    execution = store.get_execution("k")
    assert (execution.status, execution.outcome, execution.failure_kind) == ("failed", "unknown", "interrupted")
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
