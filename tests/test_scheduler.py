"""`task_scheduler_sensor`'s logic with a controlled clock, a real SQLite store and a real Dagster
instance: window runs planned once, windows whose run is gone rescued, misfire policies applied
with their reasons, catch-ups coalesced, runs that ended holding executions settled, run-now
launched, lost publications reported."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.scheduling.planning import LEAD, WINDOW
from agent_pipelines.scheduling.scheduler import Scheduler, SchedulerCursor
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import Claim, ResultRecord, Settlement, StateStore, status
from agent_pipelines.store.schema import run_heartbeats

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


LONG_AGO = parse_due("2026-01-01T00:00:00Z")


@pytest.fixture
def store(instance, catalog) -> StateStore:
    store = StateStore.for_instance(instance)
    store.register_tasks(list(catalog.tasks), LONG_AGO)
    return store


def _scheduler(catalog, store) -> Scheduler:
    return Scheduler(catalog, store)


def _carried(request: dg.RunRequest) -> list[str]:
    return sorted(request.run_config["ops"]["send_scheduled_tasks"]["config"]["tasks"])


def _start(instance, catalog, request: dg.RunRequest, status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED) -> dg.DagsterRun:
    """A run of the request, as the daemon would launch it."""
    return instance.add_run(
        dg.DagsterRun(job_name=request.job_name, run_config=request.run_config, tags=request.tags, status=status)
    )


def test_windows_are_planned_ahead_once(catalog, store, instance) -> None:
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:10Z"), instance)
    by_key = {r.run_key: r for r in requests}
    assert sorted(by_key) == ["window:2026-11-23T12:00:00.000Z:0", "window:2026-11-23T12:01:00.000Z:0"]
    first = by_key["window:2026-11-23T12:00:00.000Z:0"]
    assert first.job_name == "scheduled_tasks_job" and not first.asset_selection, "a window run selects no asset"
    # due tasks, the unscheduled downstream of a due task, and the event listener; never `off`
    assert _carried(first) == ["all_policy", "every_20s", "follow_up", "latest_policy", "listener", "seconds_cron", "skip_policy"]
    assert first.tags["agent_pipelines/window_start"] == "2026-11-23T12:00:00.000Z"
    assert first.tags["agent_pipelines/window_end"] == "2026-11-23T12:01:00.000Z"
    assert first.tags["agent_pipelines/tasks"].startswith("all_policy, every_20s")
    assert first.tags["agent_pipelines/agents"] == "a"
    assert first.tags["dagster/priority"] == "10"
    # run monitoring fails a window run killed with its machine once it outlives every retry
    assert (LEAD + WINDOW).total_seconds() < int(first.tags["dagster/max_runtime"]) < 24 * 3600
    assert "once" in _carried(by_key["window:2026-11-23T12:01:00.000Z:0"])
    assert cursor.planned_until == parse_due("2026-11-23T12:02:00Z")

    again, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:15Z"), instance)
    assert [r for r in again if r.run_key.startswith("window:") and ":rescue" not in r.run_key] == [], "a window is requested once"
    later, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:50Z"), instance)
    assert [r.run_key for r in later if ":rescue" not in r.run_key] == ["window:2026-11-23T12:02:00.000Z:0"]


def test_nothing_before_a_task_existed_is_planned_or_missed(catalog, instance) -> None:
    store = StateStore.for_instance(instance)  # nothing registered: the platform starts now
    now = parse_due("2026-11-23T12:00:30Z")
    requests, cursor = _scheduler(catalog, store).tick(SchedulerCursor(), now, instance)
    assert all(d >= now for d in store.first_seen(list(catalog.tasks)).values())
    window = next(r for r in requests if r.run_key == "window:2026-11-23T12:00:00.000Z:0")
    assert "once" not in _carried(window)
    for minute in range(1, 4):  # nobody runs the window runs: every due time since is missed
        _, cursor = _scheduler(catalog, store).tick(cursor, now + dt.timedelta(minutes=minute), instance)
    missed = [e for e in store.executions_with_status("missed", limit=10_000)]
    assert missed and all(e.due_time >= now for e in missed), "no missed rows for due times before the tasks existed"


def test_a_window_whose_run_is_gone_is_rescued_as_often_as_it_takes(catalog, store, instance) -> None:
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    planned, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:00.5Z"), instance)
    window = next(r for r in planned if r.run_key == "window:2026-11-23T12:00:00.000Z:0")
    run = _start(instance, catalog, window, dg.DagsterRunStatus.NOT_STARTED)
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:22Z"), instance)
    assert not [r for r in requests if ":rescue" in r.run_key], "a run still on its way is not rescued"

    instance.report_run_failed(run, "killed")  # the run worker died: Dagster says FAILURE at once
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:23Z"), instance)
    (rescue,) = [r for r in requests if ":rescue" in r.run_key]
    assert rescue.tags["agent_pipelines/window_start"] == "2026-11-23T12:00:00.000Z"
    assert rescue.tags["agent_pipelines/rescue"] == "true"
    assert {"every_20s", "seconds_cron"} <= set(_carried(rescue))
    second = _start(instance, catalog, rescue)
    store.beat(second.run_id)
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:24Z"), instance)
    assert not [r for r in requests if ":rescue" in r.run_key], "the rescue carries the window now"
    instance.report_run_failed(second, "killed again")  # a second crash in the same window
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:25Z"), instance)
    assert [r for r in requests if ":rescue" in r.run_key], "rescued again, not left to a minute of misses"


def test_a_window_whose_run_died_before_the_window_began_is_replaced_ahead(catalog, store, instance) -> None:
    """Everything killed at 12:00:20: the run already started for the 12:01 window is gone too.
    Its replacement is requested before 12:01, not after its first due times were missed."""
    scheduler = _scheduler(catalog, store)
    cursor = SchedulerCursor()
    planned, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:00.5Z"), instance)
    ahead = next(r for r in planned if r.run_key == "window:2026-11-23T12:01:00.000Z:0")
    run = _start(instance, catalog, ahead)
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:10Z"), instance)
    assert not [r for r in requests if "12:01:00.000Z:0:rescue" in r.run_key], "a live run of the window is left alone"

    instance.report_run_failed(run, "killed with the daemon and the code server")
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:30Z"), instance)
    (replacement,) = [r for r in requests if r.run_key.startswith("window:2026-11-23T12:01:00.000Z:0:rescue")]
    assert set(_carried(replacement)) >= {"every_20s", "seconds_cron", "once"}
    _start(instance, catalog, replacement, dg.DagsterRunStatus.NOT_STARTED)
    requests, cursor = scheduler.tick(cursor, parse_due("2026-11-23T12:00:35Z"), instance)
    assert not [r for r in requests if "12:01:00.000Z:0:rescue" in r.run_key], "replaced once"


def _key(task: str, due: str) -> str:
    return Trigger.scheduled(parse_due(due)).idempotency_key(task)


def _reconcile_tick(catalog, store, instance, cursor, now: str):
    requests, cursor = _scheduler(catalog, store).tick(cursor, parse_due(now), instance)
    catchups = sorted(
        f"{e.task} {e.due_time.strftime('%H:%M')}" for e in store.executions_with_status("catchup") if e.task.endswith("_policy")
    )
    return catchups, requests, cursor


def _quiet_cursor(reconciled_until: str, last_tick: str | None = None) -> SchedulerCursor:
    return SchedulerCursor(
        planned_until=parse_due("2026-11-23T13:00:00Z"),  # keep planning out of these tests
        reconciled_until=parse_due(reconciled_until),
        last_tick=parse_due(last_tick) if last_tick else None,
    )


def test_misfire_policies_after_an_outage_coalesce_into_one_catchup_run(catalog, store, instance) -> None:
    """Due every minute; the scheduler was down from 11:59:50 to 12:05:00.5 (one outage)."""
    cursor = _quiet_cursor("2026-11-23T12:00:00Z", last_tick="2026-11-23T11:59:50Z")
    catchups, requests, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:05:00.5Z")
    # until = now - 60 s grace = 12:04:00.5: due times 12:00 .. 12:04 are reconciled
    assert catchups == ["all_policy 12:03", "all_policy 12:04", "latest_policy 12:04"]
    (run,) = [r for r in requests if r.job_name == "catchup_tasks_job"]
    assert run.tags["dagster/priority"] == "-10" and run.tags["agent_pipelines/catchup"] == "true"
    statuses = store.statuses([_key(t, f"2026-11-23T12:0{m}:00Z") for t in ("skip_policy", "latest_policy", "all_policy") for m in range(5)])
    assert set(statuses.values()) == {"missed", "catchup"}
    missed = store.get_execution(_key("skip_policy", "2026-11-23T12:04:00Z"))
    assert missed.status == "missed"
    assert "the scheduler was not running from 2026-11-23T11:59:50" in missed.reason and "skip" in missed.reason
    assert cursor.reconciled_until == parse_due("2026-11-23T12:04:00.5Z")
    _start(instance, catalog, run)
    _, again, _ = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:05:05Z")
    assert not [r for r in again if r.job_name == "catchup_tasks_job"], "one catch-up run at a time"


def test_one_outage_seen_over_several_ticks_is_one_episode(catalog, store, instance) -> None:
    cursor = _quiet_cursor("2026-11-23T12:00:00Z")
    first, _, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:03:00.5Z")
    assert first == ["all_policy 12:01", "all_policy 12:02", "latest_policy 12:02"]
    _succeed(store, [e.idempotency_key for e in store.executions_with_status("catchup")], take=True)
    second, _, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:05:00.5Z")
    assert second == [], "still the same outage: its catch-up budget is spent"
    # 12:05 fires normally, which ends the episode; 12:06 is missed again: a new episode.
    fired = [_key(t, "2026-11-23T12:05:00Z") for t in ("latest_policy", "all_policy")]
    store.claim([Claim(k, k.split(":")[1], "a", "r", "schedule", parse_due("2026-11-23T12:05:00Z"), "v") for k in fired])
    _succeed(store, fired)
    third, _, cursor = _reconcile_tick(catalog, store, instance, cursor, "2026-11-23T12:07:00.5Z")
    assert third == ["all_policy 12:06", "latest_policy 12:06"]


def _succeed(store: StateStore, keys: list[str], take: bool = False) -> None:
    if take:
        store.take_over(keys, "r", parse_due("2026-11-23T12:03:01Z"))
    store.settle([Settlement(k, k.split(":")[1], status.SUCCEEDED, "r", outcome="ok") for k in keys])


def test_a_claim_its_dead_run_never_sent_goes_to_the_misfire_policy(catalog, store, instance) -> None:
    due = "2026-11-23T12:00:00Z"
    store.claim([Claim(_key("latest_policy", due), "latest_policy", "a", "dead-run", "schedule", parse_due(due), "v")])
    store.release_run("dead-run", "its run was killed")
    catchups, _, _ = _reconcile_tick(catalog, store, instance, _quiet_cursor("2026-11-23T11:59:30Z"), "2026-11-23T12:01:00.5Z")
    assert "latest_policy 12:00" in catchups
    assert "its run was killed" in store.get_execution(_key("latest_policy", due)).reason


def test_run_now_requests_are_launched_once(catalog, store, instance) -> None:
    request_id = store.add_run_request("daily", requested_by="alice", variables={"variables": {}})
    cursor = _quiet_cursor("2026-11-23T12:00:00Z")
    requests, cursor = _scheduler(catalog, store).tick(cursor, parse_due("2026-11-23T12:00:01Z"), instance)
    (run_now,) = [r for r in requests if r.run_key == f"run-now:{request_id}"]
    assert [k.to_user_string() for k in run_now.asset_selection] == ["daily"]
    assert run_now.tags["agent_pipelines/trigger"] == "manual" and run_now.job_name == "agent_tasks_job"
    _start(instance, catalog, run_now)
    _scheduler(catalog, store).tick(cursor, parse_due("2026-11-23T12:00:06Z"), instance)
    assert store.pending_run_requests() == []


def _now_quietly() -> tuple[SchedulerCursor, dt.datetime]:
    """The real time (runs' timestamps are real), with planning and misfires already done."""
    now = dt.datetime.now(dt.timezone.utc)
    return SchedulerCursor(planned_until=now + dt.timedelta(days=1), reconciled_until=now, last_tick=now), now


def _silent(store: StateStore, run_id: str) -> None:
    store.beat(run_id)
    with store.engine.begin() as conn:
        conn.execute(sa.update(run_heartbeats).where(run_heartbeats.c.run_id == run_id).values(beat_at=parse_due("2026-11-23T11:00:00Z")))


def _held(store: StateStore, run_id: str) -> None:
    """The run holds one execution of each kind: unsent, in flight, waiting to retry."""
    now = dt.datetime.now(dt.timezone.utc)
    store.claim([Claim(k, "every_20s", "a", run_id, "schedule", now, "v") for k in ("unsent", "in-flight", "retry")])
    store.start_attempts(["in-flight", "retry"], run_id, now)
    store.settle([Settlement("retry", "every_20s", status.RETRYING, run_id, next_attempt_at=now)])


@pytest.mark.parametrize("how", ["failed by Dagster", "silent", "ended SUCCESS"])
def test_a_run_that_ended_holding_executions_is_settled(catalog, store, instance, how) -> None:
    state = {"failed by Dagster": dg.DagsterRunStatus.FAILURE, "silent": dg.DagsterRunStatus.STARTED, "ended SUCCESS": dg.DagsterRunStatus.SUCCESS}[how]
    run = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=state, tags={"agent_pipelines/trigger": "schedule"}))
    alive = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.STARTED))
    store.beat(alive.run_id)
    store.claim([Claim("alive-key", "every_20s", "a", alive.run_id, "schedule", None, "v")])
    if how == "silent":
        _silent(store, run.run_id)
    _held(store, run.run_id)
    scheduler = _scheduler(catalog, store)
    requests, _ = scheduler.tick(*_now_quietly(), instance)
    assert [(r, n) for r, _why, n in scheduler.report.settled_runs] == [(run.run_id, 3)]
    assert store.get_execution("unsent").status == "not_sent"
    assert store.get_execution("in-flight").status == "unknown"
    assert (store.get_execution("retry").status, store.get_execution("retry").run_id) == ("retrying", "")
    assert store.get_execution("alive-key").status == "claimed", "a beating run keeps what it holds"
    if how == "silent":
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    (catchup,) = [r for r in requests if r.job_name == "catchup_tasks_job"]
    assert "every_20s" in catchup.tags["agent_pipelines/tasks"], "a catch-up run carries what still can be sent"


def test_a_result_its_run_never_published_is_reported(catalog, store, instance) -> None:
    run = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.FAILURE))
    store.claim([Claim("k", "daily", "a", run.run_id, "schedule", None, "v")])
    store.start_attempts(["k"], run.run_id, dt.datetime.now(dt.timezone.utc))
    store.settle([Settlement("k", "daily", status.SUCCEEDED, run.run_id, outcome="ok", result=ResultRecord(prompt="p", output="o"))])
    cursor, now = _now_quietly()
    scheduler = _scheduler(catalog, store)
    scheduler.tick(cursor, now + dt.timedelta(seconds=60), instance)
    assert scheduler.report.republished == 1
    (record,) = instance.fetch_materializations(dg.AssetKey("daily"), limit=5).records
    assert record.asset_materialization.metadata["output"].value == "o"
    assert record.asset_materialization.metadata["run"].value == run.run_id
    scheduler.tick(cursor, now + dt.timedelta(seconds=120), instance)
    assert len(instance.fetch_materializations(dg.AssetKey("daily"), limit=5).records) == 1, "reported once"


def test_a_run_whose_process_is_gone_is_settled_at_once_not_after_the_silence(catalog, store, instance) -> None:
    """On the run workers' own machine a beat names its process: a killed worker is dead now,
    though its last beat is fresh."""
    import subprocess

    from agent_pipelines.process_identity import identity_of, is_gone as worker_gone

    victim = subprocess.Popen(["sleep", "60"])
    worker = identity_of(victim.pid)
    assert not worker_gone(worker)
    run = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.STARTED))
    alive = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.STARTED))
    store.beat(run.run_id, worker)
    store.beat(alive.run_id, identity_of(os.getpid()))
    store.claim([Claim("alive-key", "every_20s", "a", alive.run_id, "schedule", None, "v")])
    _held(store, run.run_id)
    victim.kill()
    victim.wait()
    assert worker_gone(worker)
    assert not worker_gone(f"another-host:{victim.pid}:1"), "another machine's processes are not ours to judge"

    scheduler = _scheduler(catalog, store)
    scheduler.tick(*_now_quietly(), instance)
    assert [(r, n) for r, _why, n in scheduler.report.settled_runs] == [(run.run_id, 3)]
    assert "is gone" in scheduler.report.settled_runs[0][1]
    assert store.get_execution("unsent").status == "not_sent"
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert store.get_execution("alive-key").status == "claimed"


@pytest.mark.parametrize("alive", [True, False], ids=["beating", "process gone"])
def test_a_dead_catchup_run_does_not_hold_back_the_next(catalog, store, instance, alive: bool) -> None:
    """A catch-up run that died STARTED holding nothing (killed between executions, or crashed
    while the database was down) is failed, and the next catch-up run is requested at once."""
    import subprocess

    from agent_pipelines.process_identity import identity_of

    victim = subprocess.Popen(["sleep", "60"])
    catchup = instance.add_run(dg.DagsterRun(job_name="catchup_tasks_job", status=dg.DagsterRunStatus.STARTED))
    store.beat(catchup.run_id, identity_of(os.getpid() if alive else victim.pid))
    victim.kill()
    victim.wait()
    ended = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.FAILURE))
    _held(store, ended.run_id)  # what it held waits for a carrier

    requests, _ = _scheduler(catalog, store).tick(*_now_quietly(), instance)
    catchups = [r for r in requests if r.job_name == "catchup_tasks_job"]
    if alive:
        assert catchups == [], "one catch-up run at a time"
        assert instance.get_run_by_id(catchup.run_id).status == dg.DagsterRunStatus.STARTED
    else:
        assert len(catchups) == 1
        assert instance.get_run_by_id(catchup.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_catchup_run_whose_launch_was_lost_is_replaced(catalog, store, instance) -> None:
    """Killed with the daemon while STARTING, a catch-up run never starts: after
    CATCHUP_START_TIMEOUT it is failed and the next one requested (Dagster's own start timeout
    would hold every catch-up back twice as long)."""
    from agent_pipelines.scheduling.scheduler import CATCHUP_START_TIMEOUT

    catchup = instance.add_run(dg.DagsterRun(job_name="catchup_tasks_job", status=dg.DagsterRunStatus.STARTING))
    ended = instance.add_run(dg.DagsterRun(job_name="scheduled_tasks_job", status=dg.DagsterRunStatus.FAILURE))
    _held(store, ended.run_id)
    cursor, now = _now_quietly()
    requests, cursor = _scheduler(catalog, store).tick(cursor, now, instance)
    assert [r for r in requests if r.job_name == "catchup_tasks_job"] == [], "still starting: waited for"
    later = now + CATCHUP_START_TIMEOUT + dt.timedelta(seconds=5)
    requests, _ = _scheduler(catalog, store).tick(cursor, later, instance)
    assert len([r for r in requests if r.job_name == "catchup_tasks_job"]) == 1
    assert instance.get_run_by_id(catchup.run_id).status == dg.DagsterRunStatus.FAILURE
