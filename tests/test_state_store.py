"""agent_pipelines' own tables on SQLite and PostgreSQL: migrations with their own version
table, safe when many processes start at once, and the records task steps rely on."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent_pipelines.heartbeat import RunHeartbeat
from agent_pipelines.store import Claim, StateStore, sqlalchemy_url
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


def test_heartbeats_and_what_a_dead_run_leaves(store_url: str) -> None:
    store = StateStore(store_url)
    with RunHeartbeat(store, "r-alive", every_s=0.05):
        first = store.last_beats(["r-alive"])["r-alive"]
        time.sleep(0.3)
        assert store.last_beats(["r-alive", "r-other"])["r-alive"] > first
        assert "r-other" not in store.last_beats(["r-alive", "r-other"])
    assert store.last_beats(["r-alive"]) == {}, "a run that ends cleanly leaves no heartbeat behind"

    args = dict(task="t", agent="a", trigger="schedule", due_time=None, prompt_version="v")
    store.begin_attempt(idempotency_key="in-flight", run_id="r-dead", **args)
    store.begin_attempt(idempotency_key="done", run_id="r-dead", **args)
    store.finish_attempt("done", succeeded=True, outcome="ok")
    store.claim([Claim("unsent", "t", "a", "r-dead", "schedule", None, "v", status="claimed")])
    store.claim([Claim("elsewhere", "t", "a", "r-alive", "schedule", None, "v", status="claimed")])
    held = {e.idempotency_key: e for e in store.release_dead_run("r-dead", catchup=True)}
    assert sorted(held) == ["in-flight", "unsent"]
    assert (held["in-flight"].status, held["in-flight"].outcome, held["in-flight"].failure_kind) == ("failed", "unknown", INTERRUPTED)
    assert (held["unsent"].status, held["unsent"].run_id) == ("catchup", ""), "a catch-up it took goes back"
    assert store.get_execution("done").status == "succeeded"
    assert store.get_execution("elsewhere").status == "claimed"
    assert store.release_dead_run("r-dead", catchup=True) == [], "settled once"
    store.engine.dispose()


def test_a_claim_the_reconciler_decided_cannot_be_started(store_url: str) -> None:
    store = StateStore(store_url)
    store.claim([Claim("k", "t", "a", "slow-run", "schedule", None, "v")])
    assert store.reassign_stale_claims(["k"], "missed") == {"k"}
    row = dict(task="t", agent="a", run_id="slow-run", trigger="schedule", due_time=None, prompt_version="v")
    # a burst: several rows in one statement, only the undecided one starts
    assert store.begin_attempts([{**row, "idempotency_key": "k"}, {**row, "idempotency_key": "other"}]) == {"other": 1}
    assert (store.get_execution("k").status, store.get_execution("k").attempts) == ("missed", 0)
    assert store.begin_attempt(idempotency_key="k", **row) == 0
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
