"""agent_pipelines' own tables on SQLite and PostgreSQL: migrations with their own version
table, safe when many processes start at once, and the records task steps rely on."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import datetime as dt

from agent_pipelines.scheduling.heartbeat import RunHeartbeat
from agent_pipelines.store import Claim, ResultRecord, Settlement, StateStore, sqlalchemy_url, status
from agent_pipelines.store.base import utcnow
from agent_pipelines.store.migrate import head_revision
from agent_pipelines.store.schema import VERSION_TABLE
from tests.support.sqlite_limits import as_upstream_sqlite


@pytest.fixture
def store_url(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if storage == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'agent_pipelines.db'}"


def _open_store(url: str) -> str:
    store = StateStore(url)
    store.engine.dispose()
    return "ok"


def test_concurrent_first_start_migrates_once(store_url: str) -> None:
    pool = multiprocessing.get_context("spawn").Pool(4)
    try:
        assert pool.map(_open_store, [store_url] * 4) == ["ok"] * 4
    finally:
        # close + join, not terminate: a worker that inherited an ignored SIGTERM (a CI runner
        # started in the background) would never end and terminate() would wait for it forever
        pool.close()
        pool.join()
    engine = sa.create_engine(sqlalchemy_url(store_url))
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        assert versions == [head_revision()]
        assert "alembic_version" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _migrate_in_thread(url: str, errors: list[str]) -> None:
    try:
        StateStore(url).engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(f"{type(exc).__name__}: {exc}")


def test_threads_and_forked_processes_migrate_a_fresh_sqlite_store_at_once(tmp_path: Path) -> None:
    """Run workers' threads and a batch run's forked children open a new store together: each
    waits for the one migrating (a new database answers "locked" at once to a connection switching
    it to WAL while a migration holds it) and none sees a half-made schema."""
    fork = multiprocessing.get_context("fork")
    for attempt in range(4):
        url = f"sqlite:///{tmp_path / f'store{attempt}.db'}"
        errors: list[str] = []
        threads = [threading.Thread(target=_migrate_in_thread, args=(url, errors)) for _ in range(3)]
        with fork.Pool(2) as pool:
            pending = pool.map_async(_open_store, [url] * 2)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert pending.get(120) == ["ok", "ok"]
        assert errors == [], errors
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [head_revision()]
        engine.dispose()


def test_a_store_opened_while_another_holds_a_new_database_waits_for_it(tmp_path: Path) -> None:
    """A new SQLite file held by a migration's exclusive transaction: the second store waits for
    the first to commit, then finds the schema made (SQLite does not wait on its own here)."""
    import sqlite3

    path = tmp_path / "agent_pipelines.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")  # as every store's connection does first
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE placeholder (x INTEGER)")
    opened: list[StateStore] = []
    errors: list[str] = []

    def open_store() -> None:
        try:
            opened.append(StateStore(f"sqlite:///{path}"))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=open_store)
    thread.start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and thread.is_alive() and not errors:
        time.sleep(0.05)
    assert thread.is_alive() and not errors, f"it waits for the lock instead of failing: {errors}"
    holder.execute("COMMIT")
    holder.close()
    thread.join(60)
    assert errors == [] and len(opened) == 1
    with opened[0].engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == head_revision()
    opened[0].engine.dispose()


def test_a_migration_that_fails_leaves_the_sqlite_store_as_it_was(tmp_path: Path) -> None:
    """All steps of an upgrade commit together: one failing (here a table in the way of a later
    revision) rolls back the earlier ones instead of leaving a schema at no revision."""
    path = tmp_path / "agent_pipelines.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE agent_pipelines_batch_evaluations (kept TEXT)"))
        conn.execute(sa.text("INSERT INTO agent_pipelines_batch_evaluations VALUES ('mine')"))
    with pytest.raises(sa.exc.OperationalError, match="already exists"):
        StateStore(f"sqlite:///{path}")
    assert sa.inspect(engine).get_table_names() == ["agent_pipelines_batch_evaluations"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT kept FROM agent_pipelines_batch_evaluations")).scalars().all() == ["mine"]
    engine.dispose()


def _claim(key: str, run_id: str, **extra) -> Claim:
    return Claim(key, "t", "a", run_id, "schedule", None, "v", **extra)


def test_an_execution_goes_claimed_sending_settled(store_url: str) -> None:
    store = StateStore(store_url)
    now = utcnow()
    assert store.claim([_claim("k1", "r1")]) == {"k1"}
    assert store.claim([_claim("k1", "r2")]) == set(), "one claim per key"
    assert store.start_attempts(["k1"], "r2", now) == {}, "only the holder may send"
    assert store.start_attempts(["k1"], "r1", now) == {"k1": 1}
    store.settle([Settlement("k1", "t", status.RETRYING, "r1", failure_kind="server_error", error="503", next_attempt_at=now)])
    assert store.start_attempts(["k1"], "r1", now) == {"k1": 2}
    result = ResultRecord(prompt="p", output="the answer", model="m", session_id="s", tokens_in=3, tokens_out=2)
    store.settle([Settlement("k1", "t", status.SUCCEEDED, "r1", outcome="ok", latency_ms=12.5, sent_at=now, lateness_ms=1.5, result=result)])
    execution = store.get_execution("k1")
    assert (execution.status, execution.outcome, execution.attempts, execution.run_id) == ("succeeded", "ok", 2, "r1")
    assert execution.lateness_ms == 1.5 and execution.latency_ms == 12.5
    assert store.results(["k1"])["k1"].output == "the answer"
    assert store.latest_success("t").idempotency_key == "k1"
    assert store.latest_success("t", run_id="other") is None
    assert [e.idempotency_key for e in store.unpublished(utcnow() + dt.timedelta(seconds=1))] == ["k1"]
    store.mark_published(["k1"], now)
    assert store.unpublished(utcnow() + dt.timedelta(seconds=1)) == []
    store.engine.dispose()


def test_heartbeats_and_what_an_ended_run_leaves(store_url: str) -> None:
    store = StateStore(store_url)
    with RunHeartbeat(store, "r-alive", every_s=0.05):
        first = store.last_beats(["r-alive"])["r-alive"]
        time.sleep(0.3)
        assert store.last_beats(["r-alive", "r-other"])["r-alive"] > first
        assert "r-other" not in store.last_beats(["r-alive", "r-other"])
    last = store.last_beats(["r-alive"])["r-alive"]
    assert last > first, "a run that ends leaves its last beat: it is not silent while its step ends"
    assert store.prune_beats(last) == 0 and store.prune_beats(last + dt.timedelta(seconds=1)) == 1
    assert store.last_beats(["r-alive"]) == {}

    now = utcnow()
    store.claim([_claim(key, "r-dead") for key in ("in-flight", "done", "unsent", "waiting")] + [_claim("elsewhere", "r-alive")])
    store.start_attempts(["in-flight", "done", "waiting"], "r-dead", now)
    store.settle([Settlement("done", "t", status.SUCCEEDED, "r-dead", outcome="ok")])
    store.settle([Settlement("waiting", "t", status.RETRYING, "r-dead", next_attempt_at=now)])
    assert store.held_by_runs() == {"r-dead": 3, "r-alive": 1}
    held = {e.idempotency_key: e for e in store.release_run("r-dead", "its run was killed")}
    assert sorted(held) == ["in-flight", "unsent", "waiting"]
    assert (held["in-flight"].status, held["in-flight"].outcome) == ("unknown", "unknown"), "it may have reached the agent"
    assert "may have acted" in held["in-flight"].reason
    assert (held["unsent"].status, held["unsent"].run_id) == ("not_sent", ""), "provably never sent"
    assert "its run was killed" in held["unsent"].reason
    assert (held["waiting"].status, held["waiting"].run_id) == ("retrying", ""), "a retry waits for another carrier"
    assert store.get_execution("done").status == "succeeded"
    assert store.get_execution("elsewhere").status == "claimed"
    assert store.release_run("r-dead", "again") == [], "settled once"
    waiting = {e.idempotency_key for e in store.waiting_for_carrier(now, now)}
    assert waiting == {"unsent", "waiting"}
    assert store.take_over(["unsent", "waiting", "in-flight"], "r-new", now) == {"unsent", "waiting"}
    assert store.take_over(["unsent"], "r-other", now) == set(), "taken once"

    # A run that settles its own claim as `not_sent` (stopped, or it could not reach the store
    # before sending) releases it: another run may take it.
    store.claim([_claim("stopped", "r-stopping")])
    store.settle([Settlement("stopped", "t", status.NOT_SENT, "r-stopping", reason="the run stopped before it was sent")])
    assert store.get_execution("stopped").run_id == ""
    assert "stopped" in {e.idempotency_key for e in store.waiting_for_carrier(now, now)}
    store.engine.dispose()


def test_a_late_answer_replaces_the_guess_unknown(store_url: str) -> None:
    store = StateStore(store_url)
    store.claim([_claim("k", "slow")])
    store.start_attempts(["k"], "slow", utcnow())
    store.release_run("slow", "its heartbeat stopped")
    store.settle([Settlement("k", "t", status.SUCCEEDED, "slow", outcome="ok", result=ResultRecord(prompt="p", output="late"))])
    assert store.get_execution("k").status == "succeeded"
    store.engine.dispose()


def test_deadlines_and_misfire_decisions(store_url: str) -> None:
    store = StateStore(store_url)
    now = utcnow()
    past = now - dt.timedelta(seconds=1)
    store.claim([_claim("late", "r", deadline=past), _claim("fine", "r", deadline=now + dt.timedelta(hours=1))])
    store.release_run("r", "stopped")
    assert store.take_over(["late"], "r2", now) == set(), "past its deadline: nobody sends it any more"
    expired = {e.idempotency_key: e for e in store.expire_waiting(now)}
    assert set(expired) == {"late"} and expired["late"].status == "not_sent"
    assert "deadline passed" in expired["late"].reason
    assert store.expire_waiting(now) == [], "expired once"
    decided = store.decide([_claim("fine", "", status="missed", reason="the scheduler was down"), _claim("new", "", status="catchup", reason="caught up")])
    assert decided == {"fine", "new"}
    assert "the scheduler was down" in store.get_execution("fine").reason
    assert store.start_attempts(["fine"], "r", now) == {}, "a decided claim is never started"
    store.engine.dispose()


def test_manual_launches_take_their_execution_back(store_url: str) -> None:
    store = StateStore(store_url)
    assert store.claim_again([_claim("manual", "run-1")]) == {"manual"}
    store.start_attempts(["manual"], "run-1", utcnow())
    assert store.claim_again([_claim("manual", "run-2")]) == set(), "not while it is in flight"
    store.settle([Settlement("manual", "t", status.FAILED, "run-1", outcome="failed")])
    assert store.claim_again([_claim("manual", "run-2")]) == {"manual"}, "a re-execution sends it again"
    store.engine.dispose()


def test_session_turns_agent_health_and_first_seen(store_url: str) -> None:
    store = StateStore(store_url)
    now = utcnow()
    soon = now + dt.timedelta(seconds=30)
    assert store.take_turn("conv", "a", soon, now)
    assert not store.take_turn("conv", "b", soon, now), "one turn at a time"
    assert store.take_turn("conv", "b", soon, soon + dt.timedelta(seconds=1)), "a lease its holder left expires"
    store.end_turn("conv", "b")
    assert store.take_turn("conv", "c", soon, now)

    for _ in range(2):
        assert store.record_agent_failure("x", "refused", threshold=3, first_probe_s=10, now=now).healthy
    sick = store.record_agent_failure("x", "refused", threshold=3, first_probe_s=10, now=now)
    assert not sick.healthy and sick.next_probe_at == now + dt.timedelta(seconds=10)
    assert not store.claim_probe("x", now, 300), "not before its time"
    assert store.claim_probe("x", sick.next_probe_at, 300)
    assert not store.claim_probe("x", sick.next_probe_at, 300), "one prober"
    assert store.agent_health(["x"])["x"].probe_interval_s == 20, "the interval doubles"
    assert store.record_agent_success("x")
    assert store.agent_health(["x"])["x"].healthy
    assert not store.record_agent_success("x"), "nothing to change"

    first = store.register_tasks(["t1"], now)
    later = store.register_tasks(["t1", "t2"], soon)
    assert later["t1"] == first["t1"] == now and later["t2"] == soon
    store.engine.dispose()


def test_sessions_and_bounded_history(store_url: str) -> None:
    store = StateStore(store_url)
    assert store.session_remote_id("t", "hermes") is None
    store.save_session("t", "hermes", "s-1")
    store.save_session("t", "hermes", "s-2")
    assert store.session_remote_id("t", "hermes") == "s-2"
    assert store.session_remote_id("t", "other_agent") is None, "a session belongs to one agent"
    for turn in range(5):
        store.append_history("t", f"run-{turn}", [("user", f"q{turn}"), ("assistant", f"a{turn}")])
    assert store.history("t", 2) == [("user", "q3"), ("assistant", "a3"), ("user", "q4"), ("assistant", "a4")]
    assert store.history("t", 0) == []
    store.engine.dispose()


def test_reads_over_a_whole_fleet_bind_no_more_values_than_upstream_sqlite_allows(tmp_path: Path) -> None:
    """40,000 agents and tasks in one question (upstream SQLite binds at most 32,766 values in a
    statement): each read asks in chunks and answers as one query would, limits and order included."""
    store = StateStore(f"sqlite:///{tmp_path / 'fleet.db'}")
    as_upstream_sqlite(store.engine)
    agents = [f"node{i:05d}" for i in range(40_000)]
    tasks = [f"task{i:05d}" for i in range(40_000)]
    first, last = agents[0], agents[-1]
    now = utcnow()
    store.record_agent_failure(last, "connection refused", threshold=1, first_probe_s=5.0, now=now)
    store.record_lifecycle_event(last, "wake", at=now - dt.timedelta(seconds=2))
    store.record_lifecycle_event(first, "sleep", at=now - dt.timedelta(seconds=1))
    store.record_lifecycle_event(last, "sleep", at=now)
    due = now.replace(microsecond=0)
    store.claim([
        Claim("held", tasks[0], first, "run-a", "schedule", due, "v1"),
        Claim("unstarted-new", tasks[-1], last, "", "batch", None, "v1"),
        Claim("unstarted-old", tasks[20_000], last, "", "batch", None, "v1"),
    ])

    assert set(store.agent_health(agents)) == {last}
    assert [(e.agent, e.event) for e in store.lifecycle_events(agents)] == [(last, "wake"), (first, "sleep"), (last, "sleep")]
    assert [(e.agent, e.event) for e in store.lifecycle_events(agents, limit=2)] == [(last, "wake"), (first, "sleep")]
    assert store.agents_in_flight(agents) == {first, last}
    assert set(store.last_used(agents)) == {first, last}
    assert store.newest_due_times(tasks, due) == {tasks[0]: due}
    assert store.held_by_runs(tasks) == {"run-a": 1}
    assert {c.idempotency_key for c in store.unstarted_claims(tasks)} == {"unstarted-new", "unstarted-old"}
    assert len(store.unstarted_claims(tasks, limit=1)) == 1
