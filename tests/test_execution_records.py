"""Execution records: filters, keyset pages, text search, the CLI, the `/ops/executions` page and
retention, on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.testclient import TestClient

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.catalog.retention import RetentionSpec
from agent_pipelines.cli import main
from agent_pipelines.records.filters import build_filter
from agent_pipelines.records.indexes import missing_indexes
from agent_pipelines.records.retention import apply_retention, retention_preview
from agent_pipelines.store import (
    Claim,
    ResultRecord,
    Settlement,
    StateStore,
    records,
    schema,
    sqlalchemy_url,
)
from agent_pipelines.store.migrate import _alembic_config
from agent_pipelines.store.records import BadCursor, RecordFilter, encode_cursor
from tests.conftest import sensor_context, write_catalog

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def store(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    url = f"sqlite:///{tmp_path / 'state.db'}" if storage == "sqlite" else request.getfixturevalue("postgres_url")
    return StateStore.for_url(url)


def _seed(store: StateStore, specs: list[dict]) -> list[str]:
    """Executions through the real claim/settle path, then dated as each spec says.

    spec keys: key, task, agent, trigger, version, status (terminal or held), age (timedelta
    before NOW), output, error.
    """
    claims = [
        Claim(s["key"], s.get("task", "daily_a"), s.get("agent", "demo"), "run-1", s.get("trigger", "schedule"), None, s.get("version", "v1"))
        for s in specs
    ]
    assert store.claim(claims) == {s["key"] for s in specs}
    settled = [
        Settlement(
            s["key"],
            s.get("task", "daily_a"),
            s.get("status", "succeeded"),
            "run-1",
            error=s.get("error"),
            latency_ms=12.0,
            cost=0.001,
            result=ResultRecord(prompt="p", output=s["output"]) if "output" in s else None,
        )
        for s in specs
        if s.get("status", "succeeded") not in ("claimed", "retrying")
    ]
    store.settle(settled)
    table = schema.executions
    with store.engine.begin() as conn:
        for s in specs:
            created = NOW - s.get("age", dt.timedelta(0))
            conn.execute(table.update().where(table.c.idempotency_key == s["key"]).values(created_at=created))
            # backdated after the fact, so its result's copy of the sort key too (a real
            # execution's created_at never changes after its claim)
            conn.execute(
                schema.results.update().where(schema.results.c.idempotency_key == s["key"]).values(execution_created_at=created)
            )
            if s.get("status") == "retrying":
                conn.execute(table.update().where(table.c.idempotency_key == s["key"]).values(status="retrying"))
    return [s["key"] for s in specs]


def _all_pages(store: StateStore, wanted: RecordFilter, limit: int, archived: bool = False) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        page = store.search_executions(wanted, limit=limit, cursor=cursor, archived=archived)
        keys += [row.execution.idempotency_key for row in page.rows]
        if page.next_cursor is None:
            return keys
        cursor = page.next_cursor


def test_pages_see_every_row_exactly_once_newest_first_under_concurrent_inserts(store: StateStore) -> None:
    # Ties on created_at (groups of 3) are ordered by key, so no row falls between two pages.
    specs = [{"key": f"k{i:03d}", "age": dt.timedelta(minutes=100 - i // 3), "output": f"out {i}"} for i in range(47)]
    existing = _seed(store, specs)
    first = store.search_executions(RecordFilter(), limit=10)
    seen = [row.execution.idempotency_key for row in first.rows]
    _seed(store, [{"key": f"new{i}", "output": "late"} for i in range(5)])  # newer rows arrive meanwhile
    cursor = first.next_cursor
    while cursor:
        page = store.search_executions(RecordFilter(), limit=10, cursor=cursor)
        seen += [row.execution.idempotency_key for row in page.rows]
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 47
    assert set(seen) == set(existing)
    expected = sorted(sorted(specs, key=lambda s: s["key"], reverse=True), key=lambda s: s["age"])  # newest, then key desc
    assert seen == [s["key"] for s in expected]
    assert first.rows[0].output_preview == "out 46"


def test_filters_each_and_combined(store: StateStore) -> None:
    specs = [
        {"key": "a1", "task": "daily_a", "agent": "demo", "trigger": "schedule", "version": "v1", "status": "succeeded", "age": dt.timedelta(hours=1)},
        {"key": "a2", "task": "daily_b", "agent": "demo", "trigger": "manual", "version": "v2", "status": "failed", "age": dt.timedelta(hours=3)},
        {"key": "a3", "task": "hourly_x", "agent": "claw", "trigger": "event", "version": "v1", "status": "failed", "age": dt.timedelta(days=2)},
        {"key": "a4", "task": "dailyXa", "agent": "claw", "trigger": "schedule", "version": "v3", "status": "unknown", "age": dt.timedelta(minutes=5)},
        {"key": "a5", "task": "daily_a", "agent": "demo", "trigger": "schedule", "version": "v1", "status": "claimed", "age": dt.timedelta(minutes=1)},
    ]
    _seed(store, specs)

    def keys(**kwargs: object) -> set[str]:
        return set(_all_pages(store, build_filter(now=NOW, **kwargs), limit=2))  # type: ignore[arg-type]

    assert keys() == {"a1", "a2", "a3", "a4", "a5"}
    assert keys(tasks=["daily_*"]) == {"a1", "a2", "a5"}  # `_` is literal, not LIKE's any-character
    assert keys(tasks=["daily_?", "hourly_x"]) == {"a1", "a2", "a3", "a5"}
    assert keys(tasks=["daily_a"]) == {"a1", "a5"}
    assert keys(agents=["claw"]) == {"a3", "a4"}
    assert keys(statuses=["failed,unknown"]) == {"a2", "a3", "a4"}
    assert keys(triggers=["manual", "event"]) == {"a2", "a3"}
    assert keys(prompt_versions=["v1"]) == {"a1", "a3", "a5"}
    assert keys(since="2h") == {"a1", "a4", "a5"}
    assert keys(until="2h") == {"a2", "a3"}
    assert keys(since=(NOW - dt.timedelta(days=1)).date().isoformat(), until="30m") == {"a1", "a2"}
    assert keys(tasks=["daily_*"], statuses=["failed"], since="1d") == {"a2"}
    with pytest.raises(ValueError, match="unknown status"):
        build_filter(now=NOW, statuses=["broken"])
    with pytest.raises(ValueError, match="ISO"):
        build_filter(now=NOW, since="yesterday")


@pytest.mark.parametrize(
    "probe, walk, walk_cost",
    [(records.PROBE_ROWS, records.TEXT_WALK_ROWS, records.WALK_US_PER_ROW), (1, 2, 0.0), (2, 1, 1e12)],
    ids=["defaults", "probe-walk-then-index", "probe-then-index"],
)
def test_text_search_in_output_or_error_case_insensitive_and_literal(
    store: StateStore, probe: int, walk: int, walk_cost: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A text search probes rows one by one, then walks on or asks the trigram indexes (PostgreSQL):
    # whichever way finds a row, pages come out the same.
    monkeypatch.setattr(records, "PROBE_ROWS", probe)
    monkeypatch.setattr(records, "TEXT_WALK_ROWS", walk)
    monkeypatch.setattr(records, "WALK_US_PER_ROW", walk_cost)
    specs = [
        {"key": "t1", "output": "The agent hit a TIMEOUT while summarising"},
        {"key": "t2", "status": "failed", "error": "timeout after 30s waiting for the agent"},
        {"key": "t3", "output": "growth was 50% this week"},
        {"key": "t4", "output": "growth was 50 percent; snake_case here"},
        {"key": "t5", "output": "nothing to see"},
        {"key": "t6", "output": "another timeout"},
        {"key": "t7", "output": "and a timeout again"},
    ]
    _seed(store, [{**s, "age": dt.timedelta(minutes=i)} for i, s in enumerate(specs)])

    def keys(text: str, limit: int = 10, **kwargs: object) -> list[str]:
        return _all_pages(store, RecordFilter(text=text, **kwargs), limit=limit)  # type: ignore[arg-type]

    assert keys("timeout") == ["t1", "t2", "t6", "t7"]
    assert keys("timeout", limit=1) == ["t1", "t2", "t6", "t7"]
    assert keys("TimeOut", limit=3) == ["t1", "t2", "t6", "t7"]
    assert keys("timeout", statuses=("failed",)) == ["t2"]
    assert keys("50%") == ["t3"]
    assert keys("e_c") == ["t4"]
    assert keys("zeppelin") == []


def test_owner_resolves_to_its_tasks_through_the_catalog(store: StateStore, tmp_path: Path) -> None:
    catalog_dir = write_catalog(
        tmp_path / "catalog",
        "http://127.0.0.1:9",
        """\
        tasks:
          - {name: daily_a, owner: ops, agent: demo, prompt: hi, schedule: {cron: "0 * * * *"}}
          - {name: daily_b, owner: growth, agent: demo, prompt: hi, schedule: {cron: "0 * * * *"}}
          - {name: hourly_x, owner: ops@example.com, agent: demo, prompt: hi, schedule: {cron: "0 * * * *"}}
        """,
    )
    catalog = load_catalog(catalog_dir)
    assert catalog.ok, catalog.problems
    _seed(store, [{"key": "o1", "task": "daily_a"}, {"key": "o2", "task": "daily_b"}, {"key": "o3", "task": "hourly_x"}])
    ops = build_filter(now=NOW, catalog=catalog, owners=["ops"])
    assert set(_all_pages(store, ops, limit=5)) == {"o1"}
    both = build_filter(now=NOW, catalog=catalog, owners=["team:ops,ops@example.com"], tasks=["daily_*"])
    assert set(_all_pages(store, both, limit=5)) == {"o1"}
    with pytest.raises(ValueError, match="no task in the catalog is owned by team:nobody"):
        build_filter(now=NOW, catalog=catalog, owners=["nobody"])


def test_a_cursor_must_be_one_the_store_handed_out(store: StateStore) -> None:
    with pytest.raises(BadCursor):
        store.search_executions(RecordFilter(), cursor="not-a-cursor")
    assert store.search_executions(RecordFilter(), cursor=encode_cursor(NOW, "zzz")).rows == []


def test_the_migration_builds_the_indexes_on_a_young_database(store: StateStore) -> None:
    assert missing_indexes(store.engine) == []
    inspector = sa.inspect(store.engine)
    assert {"agent_pipelines_executions_archive", "agent_pipelines_results_archive"} <= set(inspector.get_table_names())


def _sort_key_copies(engine: sa.Engine, table: sa.Table = schema.results) -> dict[str, tuple[object, object]]:
    """{key: (the result's copy of its execution's created_at, the execution's created_at)}."""
    executions = schema.executions_archive if table is schema.results_archive else schema.executions
    statement = sa.select(table.c.idempotency_key, table.c.execution_created_at, executions.c.created_at).join(
        executions, executions.c.idempotency_key == table.c.idempotency_key
    )
    with engine.connect() as conn:
        return {row[0]: (row[1], row[2]) for row in conn.execute(statement)}


def test_every_result_written_keeps_its_executions_created_at(store: StateStore) -> None:
    # Text search sorts output matches by this copy of the sort key: it must be on every result,
    # first written, written again (a retry's or a late real answer's), and archived.
    claims = [Claim(f"c{i}", "daily_a", "demo", "run-1", "schedule", None, "v1") for i in range(3)]
    store.claim(claims)
    store.claim([Claim("late", "daily_b", "demo", "run-1", "schedule", None, "v1")])
    store.settle([Settlement(c.idempotency_key, c.task, "succeeded", "run-1", result=ResultRecord(prompt="p", output="x")) for c in claims])
    store.settle([Settlement("late", "daily_b", "unknown", "run-1", result=ResultRecord(prompt="p", output="first"))])
    store.settle([Settlement("late", "daily_b", "succeeded", "run-1", result=ResultRecord(prompt="p", output="again"))])
    copies = _sort_key_copies(store.engine)
    assert set(copies) == {"c0", "c1", "c2", "late"}
    assert all(copy is not None and copy == created for copy, created in copies.values()), copies

    with store.engine.begin() as conn:  # old enough for retention
        for i, key in enumerate(["c0", "c1", "c2", "late"]):
            old = NOW - dt.timedelta(days=200 + i)
            conn.execute(schema.executions.update().where(schema.executions.c.idempotency_key == key).values(created_at=old))
            conn.execute(schema.results.update().where(schema.results.c.idempotency_key == key).values(execution_created_at=old))
    apply_retention(store, RetentionSpec(keep_days=90, archive=True, batch_size=10, pause=0), NOW)
    archived = _sort_key_copies(store.engine, schema.results_archive)
    assert set(archived) == {"c1", "c2"}  # each task's newest success stays
    assert all(copy == created for copy, created in archived.values()), archived


def _migrate(engine: sa.Engine, target: str, down: bool = False) -> None:
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, target)


def test_the_migration_fills_the_sort_key_copy_on_an_existing_database_and_goes_back(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if storage == "sqlite" else request.getfixturevalue("postgres_url")
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        _migrate(engine, "0010")
        created = [NOW - dt.timedelta(hours=i) for i in range(3)]
        with engine.begin() as conn:
            for i, at in enumerate(created):
                conn.execute(
                    sa.text(
                        "INSERT INTO agent_pipelines_executions (idempotency_key, task, agent, run_id, trigger, status, attempts,"
                        " created_at, updated_at) VALUES (:key, 'daily_a', 'demo', '', 'schedule', 'succeeded', 1, :at, :now)"
                    ),
                    {"key": f"k{i}", "at": at, "now": NOW},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO agent_pipelines_results (idempotency_key, task, output, created_at)"
                        " VALUES (:key, 'daily_a', 'an old timeout', :now)"
                    ),
                    {"key": f"k{i}", "now": NOW},
                )
        _migrate(engine, "head")
        copies = _sort_key_copies(engine)
        assert set(copies) == {"k0", "k1", "k2"}
        assert all(copy == created for copy, created in copies.values()), copies

        _migrate(engine, "0010", down=True)
        inspector = sa.inspect(engine)
        assert "execution_created_at" not in {c["name"] for c in inspector.get_columns("agent_pipelines_results")}
        assert "agent_pipelines_results_archive" not in inspector.get_table_names()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM agent_pipelines_results")).scalar_one() == 3
        _migrate(engine, "head")
    finally:
        engine.dispose()


@pytest.mark.parametrize("archive", [True, False], ids=["archive", "delete"])
def test_retention_moves_old_terminal_executions_in_bounded_batches(store: StateStore, archive: bool) -> None:
    old = dt.timedelta(days=100)
    old_terminal = [{"key": f"old{i:02d}", "status": ("succeeded", "failed", "unknown")[i % 3], "age": old, "output": f"o{i}"} for i in range(23)]
    old_held = [{"key": "held1", "status": "claimed", "age": old}, {"key": "held2", "status": "retrying", "age": old}]
    recent = [{"key": f"new{i}", "age": dt.timedelta(days=10), "output": "n"} for i in range(4)]
    # A task's newest success stays however old (downstream tasks read it); its older ones go.
    yearly = [{"key": "yearly_last", "task": "yearly", "age": old}, {"key": "yearly_before", "task": "yearly", "age": 2 * old}]
    _seed(store, old_terminal + old_held + recent + yearly)
    policy = RetentionSpec(keep_days=90, archive=archive, batch_size=10, pause=0)
    assert retention_preview(store, policy, NOW) == 24

    first = apply_retention(store, policy, NOW, max_batches=1)
    assert (first.moved, first.batches, first.finished) == (10, 1, False)
    rest = apply_retention(store, policy, NOW)
    assert (rest.moved, rest.finished) == (14, True)
    assert apply_retention(store, policy, NOW).moved == 0

    left = set(_all_pages(store, RecordFilter(), limit=50))
    assert left == {"held1", "held2", "new0", "new1", "new2", "new3", "yearly_last"}
    assert set(store.results([s["key"] for s in old_terminal])) == set()
    archived = set(_all_pages(store, RecordFilter(), limit=50, archived=True))
    if archive:
        assert archived == {s["key"] for s in old_terminal} | {"yearly_before"}
        page = store.search_executions(RecordFilter(text="o1"), limit=50, archived=True)
        assert {row.execution.idempotency_key for row in page.rows} == {"old01"} | {f"old{i}" for i in range(10, 20)}
    else:
        assert archived == set()


def test_retention_sensor_applies_the_catalog_policy(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    from sensors.retention import build_retention_sensor

    catalog_dir = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", "tasks: []\n")
    (catalog_dir / "retention.yaml").write_text("retention:\n  keep_days: 30\n  batch_size: 2\n  pause: 0s\n")
    catalog = load_catalog(catalog_dir)
    assert catalog.ok and catalog.retention is not None
    store = StateStore.for_instance(instance)
    _seed(store, [{"key": f"s{i}", "age": dt.timedelta(days=40)} for i in range(5)] + [{"key": "keep", "age": dt.timedelta(days=1)}])
    sensor = build_retention_sensor(catalog)
    assert sensor is not None
    result = sensor(sensor_context(instance))
    assert "archived 5 execution(s)" in result.skip_reason.skip_message
    assert set(_all_pages(store, RecordFilter(), limit=10)) == {"keep"}
    observation = instance.fetch_observations(dg.AssetKey("agent_catalog"), limit=1).records[0].asset_observation
    assert observation.metadata["retention_moved"].value == 5
    assert build_retention_sensor(load_catalog(write_catalog(tmp_path / "plain", "http://127.0.0.1:9", "tasks: []\n"))) is None


@pytest.mark.parametrize(
    "block, expected",
    [
        ("retention:\n  keep_days: 0\n", "retention.yaml:2: field 'retention.keep_days': Input should be greater than or equal to 1"),
        ("retention:\n  keep_days: 30\n  archiv: false\n", "retention.yaml:3: field 'retention.archiv': unknown field 'archiv' (did you mean 'archive'?)"),
        ("retention: [1]\n", "retention.yaml:1: `retention` must be a mapping"),
    ],
)
def test_a_bad_retention_block_is_reported_with_file_line_and_field(tmp_path: Path, block: str, expected: str) -> None:
    catalog_dir = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", "tasks: []\n")
    (catalog_dir / "retention.yaml").write_text(block)
    catalog = load_catalog(catalog_dir)
    assert catalog.retention is None
    assert any(str(p).endswith(expected) or expected in str(p) for p in catalog.problems), [str(p) for p in catalog.problems]


def test_two_retention_blocks_are_an_error(tmp_path: Path) -> None:
    catalog_dir = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", "tasks: []\nretention: {keep_days: 30}\n")
    (catalog_dir / "retention.yaml").write_text("retention: {keep_days: 60}\n")
    catalog = load_catalog(catalog_dir)
    assert catalog.retention is None
    assert sum("`retention` is declared 2 times" in str(p) for p in catalog.problems) == 2


def _home_store() -> StateStore:
    with dg.DagsterInstance.get() as instance:
        return StateStore.for_instance(instance)


def test_cli_lists_pages_as_table_and_json_and_prunes(dagster_home: Path) -> None:
    store = _home_store()
    _seed(store, [{"key": f"c{i}", "task": "daily_a", "status": "failed", "error": "timeout", "age": dt.timedelta(days=i * 40)} for i in range(3)])
    runner = CliRunner()
    first = runner.invoke(main, ["executions", "list", "--format", "json", "--limit", "2", "--status", "failed", "--text", "timeout"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert [e["idempotency_key"] for e in data["executions"]] == ["c0", "c1"]
    assert data["executions"][0]["error"] == "timeout" and data["executions"][0]["cost"] == 0.001
    second = json.loads(runner.invoke(main, ["executions", "list", "--format", "json", "--limit", "2", "--status", "failed", "--cursor", data["next_cursor"]]).output)
    assert [e["idempotency_key"] for e in second["executions"]] == ["c2"] and second["next_cursor"] is None

    table = runner.invoke(main, ["executions", "list", "--task", "daily_*", "--limit", "1"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["CREATED", "STATUS", "TASK"] and "c0" in lines[1]
    assert lines[-1].startswith("next cursor: ")
    bad = runner.invoke(main, ["executions", "list", "--cursor", "garbage"])
    assert bad.exit_code == 2 and "not a cursor" in bad.output

    dry = runner.invoke(main, ["executions", "prune", "--keep-days", "30", "--dry-run", str(dagster_home / "nowhere")])
    assert dry.exit_code == 0 and "would archive 2 execution(s)" in dry.output, dry.output
    done = runner.invoke(main, ["executions", "prune", "--keep-days", "30", "--delete", "--batch-size", "1", str(dagster_home / "nowhere")])
    assert done.exit_code == 0 and "deleted 2 execution(s)" in done.output and "3 batch(es)" in done.output, done.output  # the third finds none left
    assert set(_all_pages(store, RecordFilter(), limit=10)) == {"c0"}


def test_the_page_escapes_everything_links_runs_and_pages(dagster_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_pipelines.web import layout
    from agent_pipelines.web.records_page import routes

    layout.page_store.cache_clear()
    store = _home_store()
    hostile = "<script>alert('x')</script>"
    _seed(store, [{"key": f"p{i}", "output": hostile if i == 1 else f"fine {i}", "age": dt.timedelta(minutes=i)} for i in range(3)])
    client = TestClient(Starlette(routes=routes()))

    html = client.get("/ops/executions", params={"limit": 2, "text": "<script>"})
    assert html.status_code == 200
    assert "<script>" not in html.text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html.text
    assert "value='&lt;script&gt;'" in html.text  # the filter form echoes what was typed, escaped
    assert "href='/runs/run-1'" in html.text

    first = client.get("/ops/executions", params={"limit": 2})
    assert "Next page" in first.text and "p2" not in first.text
    next_href = first.text.split("href='/ops/executions?")[1].split("'")[0].replace("&amp;", "&")
    second = client.get("/ops/executions?" + next_href)
    assert "p2" in second.text and "Next page" not in second.text

    data = client.get("/ops/executions.json", params={"limit": 2}).json()
    assert [e["idempotency_key"] for e in data["executions"]] == ["p0", "p1"]
    assert data["executions"][1]["output_preview"] == hostile
    rest = client.get("/ops/executions.json", params={"limit": 2, "cursor": data["next_cursor"]}).json()
    assert [e["idempotency_key"] for e in rest["executions"]] == ["p2"] and rest["next_cursor"] is None

    assert client.get("/ops/executions.json", params={"cursor": "<b>"}).status_code == 400
    bad = client.get("/ops/executions", params={"status": "<b>bogus</b>"})
    assert bad.status_code == 400 and "&lt;b&gt;bogus&lt;/b&gt;" in bad.text and "<b>bogus" not in bad.text
    layout.page_store.cache_clear()
