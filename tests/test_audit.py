"""The audit log: append-only, hash-chained, readable in the CLI and the browser, and fed by
catalog changes. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.testclient import TestClient

from agent_pipelines.audit import Actor, audit
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.cli import main
from agent_pipelines.composition import build_definitions
from agent_pipelines.store import StateStore
from agent_pipelines.store.audit import AUDIT_KEY_ENV
from tests.conftest import sensor_context, write_catalog

ALICE = Actor("alice", "cli", "laptop pid 1", ("team-a",))
#: Storage-independent behaviour runs on SQLite only; the chain, triggers and locking run on both.
sqlite_only = pytest.mark.parametrize("storage", ["sqlite"])


@pytest.fixture
def store(dagster_home: Path) -> StateStore:
    with dg.DagsterInstance.get() as instance:
        return StateStore.for_instance(instance)


def _tamper(store: StateStore, statement: str) -> None:
    """What a database superuser could do: switch the append-only triggers off and edit rows."""
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE agent_pipelines_audit DISABLE TRIGGER USER"))
            conn.execute(sa.text(statement))
            conn.execute(sa.text("ALTER TABLE agent_pipelines_audit ENABLE TRIGGER USER"))
        else:
            conn.execute(sa.text("DROP TRIGGER agent_pipelines_audit_no_update"))
            conn.execute(sa.text("DROP TRIGGER agent_pipelines_audit_no_delete"))
            conn.execute(sa.text(statement))


def test_entries_chain_and_read_back_newest_first(store: StateStore) -> None:
    first = audit(store, ALICE, "task.pause", "daily_digest", reason="maintenance")
    second = audit(store, Actor("bob", "ui", "10.0.0.7"), "ui.launch", "daily_digest", outcome="denied", role="viewer")
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev_hash == first.hash != second.hash
    entries = store.audit_entries()
    assert [e.actor for e in entries] == ["bob", "alice"]
    assert entries[1].details == {"groups": ["team-a"], "reason": "maintenance"}
    assert entries[0].origin == "10.0.0.7" and entries[0].outcome == "denied"
    assert [e.seq for e in store.audit_entries(outcome="denied")] == [2]
    assert [e.seq for e in store.audit_entries(action="task.")] == [1]
    assert [e.seq for e in store.audit_entries(before_seq=2)] == [1]
    check = store.verify_audit()
    assert check.intact and check.entries == 2 and check.head_hash == second.hash


def test_the_database_refuses_updates_and_deletes(store: StateStore) -> None:
    audit(store, ALICE, "task.resume", "t")
    for statement in ("UPDATE agent_pipelines_audit SET actor = 'mallory'", "DELETE FROM agent_pipelines_audit"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(sa.text(statement))
    assert store.audit_entries()[0].actor == "alice"


@sqlite_only
@pytest.mark.parametrize(
    ("statement", "broken_at", "problem"),
    [
        ("UPDATE agent_pipelines_audit SET actor = 'mallory' WHERE seq = 2", 2, "edited"),
        ("DELETE FROM agent_pipelines_audit WHERE seq = 2", 3, "missing"),
        ("UPDATE agent_pipelines_audit SET details = '{}' WHERE seq = 3", 3, "edited"),
    ],
)
def test_verify_finds_the_first_entry_that_was_tampered_with(store: StateStore, statement: str, broken_at: int, problem: str) -> None:
    for index in range(4):
        audit(store, ALICE, "task.pause", f"task_{index}", note=index)
    _tamper(store, statement)
    check = store.verify_audit()
    assert not check.intact
    assert check.broken_at == broken_at and problem in (check.problem or "")


@sqlite_only
def test_a_keyed_chain_cannot_be_recomputed_without_the_key(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUDIT_KEY_ENV, "the-real-key")
    audit(store, ALICE, "prompt.promote", "daily_digest", version="v2")
    assert store.verify_audit().intact
    monkeypatch.setenv(AUDIT_KEY_ENV, "a-guessed-key")
    assert store.verify_audit().broken_at == 1


def test_concurrent_writers_keep_one_gapless_chain(store: StateStore) -> None:
    def write(worker: int) -> None:
        # A store of its own per thread: separate connections, as separate processes would have.
        own = StateStore(store.url)
        for index in range(15):
            audit(own, Actor(f"w{worker}", "api", "127.0.0.1"), "task.run_now", f"t{index}")
        own.engine.dispose()

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = store.verify_audit()
    assert check.intact and check.entries == 60


@sqlite_only
def test_cli_lists_pages_and_verifies(store: StateStore) -> None:
    for index in range(3):
        audit(store, ALICE, "task.pause", f"task_{index}")
    runner = CliRunner()
    page = runner.invoke(main, ["audit", "list", "--limit", "2", "--json"])
    assert page.exit_code == 0, page.output
    assert [json.loads(line)["target"] for line in page.stdout.splitlines()] == ["task_2", "task_1"]
    older = runner.invoke(main, ["audit", "list", "--before", "2"])
    assert older.exit_code == 0 and "task_0" in older.stdout and "alice" in older.stdout
    verified = runner.invoke(main, ["audit", "verify"])
    assert verified.exit_code == 0 and "intact: 3 entries" in verified.stdout
    _tamper(store, "UPDATE agent_pipelines_audit SET target = 'x' WHERE seq = 1")
    broken = runner.invoke(main, ["audit", "verify"])
    assert broken.exit_code == 1 and "BROKEN at entry 1" in broken.output


@sqlite_only
def test_page_shows_entries_escaped_and_filters(store: StateStore) -> None:
    from agent_pipelines.web import audit_page
    from agent_pipelines.web.layout import page_store

    page_store.cache_clear()
    audit(store, Actor("<script>x</script>", "ui", "10.0.0.9"), "ui.launch", "team_b_task", outcome="denied")
    audit(store, ALICE, "task.pause", "daily_digest")
    client = TestClient(Starlette(routes=audit_page.routes()))
    html = client.get("/ops/audit").text
    assert "Hash chain intact: 2 entries" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
    assert "team_b_task" in html and "daily_digest" in html
    filtered = client.get("/ops/audit.json", params={"outcome": "denied"}).json()
    assert [e["target"] for e in filtered["entries"]] == ["team_b_task"]
    page_store.cache_clear()


@sqlite_only
def test_catalog_changes_are_audited_item_by_item(store: StateStore, tmp_path: Path) -> None:
    one = "  - {name: alpha, owner: team-a, agent: demo, prompt: 'a', schedule: {every: 1h}}\n"
    two = "  - {name: beta, owner: team-a, agent: demo, prompt: 'b', schedule: {every: 1h}}\n"
    root = tmp_path / "catalog"
    root.mkdir()
    write_catalog(root, "http://127.0.0.1:9", "tasks:\n" + one + two)
    with dg.DagsterInstance.get() as instance:
        def tick(cursor: str | None) -> str | None:
            sensor = build_definitions(load_catalog(root)).resolve_sensor_def("catalog_health_sensor")
            return sensor.evaluate_tick(sensor_context(instance, cursor)).cursor

        cursor = tick(None)
        first = store.audit_entries(action="catalog.change")
        assert len(first) == 1 and first[0].actor == "system:catalog_health_sensor"
        assert {"task:alpha", "task:beta", "agent:demo"} <= set(first[0].details["added"])
        assert tick(cursor) == cursor and len(store.audit_entries(action="catalog.change")) == 1  # unchanged

        write_catalog(root, "http://127.0.0.1:9", "tasks:\n" + one.replace("every: 1h", "every: 2h"))
        tick(cursor)
    latest = store.audit_entries(action="catalog.change")[0]
    assert latest.details["changed"] == ["task:alpha"] and latest.details["removed"] == ["task:beta"]
    assert latest.details["sources"]["task:alpha"].endswith("tasks.yaml:2")


@sqlite_only
def test_pruning_records_is_admin_only_and_audited(store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", "tasks:\n  - {name: alpha, owner: team-a, agent: demo, prompt: a}\n")
    (tmp_path / "policy.yaml").write_text(
        "users: {ann: {}, root: {}}\n"
        "grants:\n  - {role: owner, users: [ann], team: team-a}\n  - {role: admin, users: [root]}\n"
    )
    monkeypatch.setenv("AGENT_PIPELINES_POLICY", str(tmp_path / "policy.yaml"))
    runner = CliRunner()
    monkeypatch.setenv("AGENT_PIPELINES_USER", "ann")
    refused = runner.invoke(main, ["executions", "prune", "--keep-days", "30", str(root)])
    assert refused.exit_code == 1 and "access denied" in refused.output and "admin" in refused.output
    monkeypatch.setenv("AGENT_PIPELINES_USER", "root")
    pruned = runner.invoke(main, ["executions", "prune", "--keep-days", "30", str(root)])
    assert pruned.exit_code == 0, pruned.output
    trail = store.audit_entries(action="executions.prune")
    assert [(e.actor, e.outcome) for e in trail] == [("root", "allowed"), ("ann", "denied")]
    assert trail[0].details["keep_days"] == 30
