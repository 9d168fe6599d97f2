"""agent_pipelines' own tables on SQLite and PostgreSQL: migrations with their own version
table, safe when many processes start at once, and the records task steps rely on."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent_pipelines.heartbeat import RunHeartbeat
from agent_pipelines.store import StateStore, sqlalchemy_url
from agent_pipelines.store.store import INTERRUPTED
from agent_pipelines.store.migrate import head_revision
from agent_pipelines.store.schema import VERSION_TABLE


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
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_store, [store_url] * 4) == ["ok"] * 4
    engine = sa.create_engine(sqlalchemy_url(store_url))
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        assert versions == [head_revision()]
        assert "alembic_version" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_execution_attempts_and_outcomes(store_url: str) -> None:
    store = StateStore(store_url)
    args = dict(idempotency_key="k1", task="t", agent="a", run_id="r1", trigger="manual", due_time=None, prompt_version="v")
    assert store.begin_attempt(**args) == 1
    store.finish_attempt("k1", succeeded=False, outcome="unknown", failure_kind="timeout", error="slow")
    assert store.begin_attempt(**{**args, "run_id": "r2"}) == 2
    store.finish_attempt("k1", succeeded=True, outcome="ok", latency_ms=12.5)
    execution = store.get_execution("k1")
    assert (execution.status, execution.outcome, execution.attempts, execution.run_id) == ("succeeded", "ok", 2, "r2")
    assert [e.idempotency_key for e in store.executions_for_run("r2")] == ["k1"]
    assert store.executions_for_run("r1") == []
    store.engine.dispose()


def test_a_run_that_stops_beating_has_its_in_flight_executions_interrupted(store_url: str) -> None:
    store = StateStore(store_url)
    args = dict(task="t", agent="a", trigger="schedule", due_time=None, prompt_version="v")
    store.begin_attempt(idempotency_key="alive", run_id="r-alive", **args)
    store.begin_attempt(idempotency_key="dead", run_id="r-dead", **args)
    store.begin_attempt(idempotency_key="done", run_id="r-dead", **args)
    store.finish_attempt("done", succeeded=True, outcome="ok")
    time.sleep(0.3)
    cutoff = dt.datetime.now(dt.timezone.utc)
    with RunHeartbeat(store, "r-alive", every_s=0.05):
        time.sleep(0.3)
        interrupted = store.interrupt_silent(cutoff)
    assert [e.idempotency_key for e in interrupted] == ["dead"]
    dead, alive, done = (store.get_execution(k) for k in ("dead", "alive", "done"))
    assert (dead.status, dead.outcome, dead.failure_kind) == ("failed", "unknown", INTERRUPTED)
    assert alive.status == "running" and done.status == "succeeded"
    assert store.interrupt_silent(cutoff) == [], "each execution is interrupted once"
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
