"""Batch items beyond one file: a glob of files, SQL on PostgreSQL and SQLite, a paginated JSON API
on 127.0.0.1, and a regular task's output in a real state store. Each streams in bounded
batches, keeps its ids stable, and fails with the task and the `items` field named."""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent_pipelines.batch.items import Item
from agent_pipelines.batch.sources import ItemSourceError, http_source, item_source
from agent_pipelines.catalog.item_sources import HttpItemsSpec, ItemsSpec
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.store import (
    Claim,
    ResultRecord,
    Settlement,
    StateStore,
    sqlalchemy_url,
    status,
)
from agent_pipelines.store.base import utcnow
from tests.conftest import PROJECT_ROOT, write_catalog

PROJECT_README = PROJECT_ROOT / "README.md"


def _read(source) -> tuple[list[Item], list[int]]:
    items: list[Item] = []
    sizes: list[int] = []
    for batch in source():
        sizes.append(len(batch))
        items.extend(batch)
    return items, sizes


# -- the spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "set exactly one items source: one of `path`, `glob`, `sql`, `http`, `from_task`, `from_output`"),
        ({"path": "a.csv", "sql": "SELECT 1", "url_env": "DB"}, "(got `path`, `sql`)"),
        ({"sql": "SELECT 1"}, "`sql` needs `url_env`"),
        ({"path": "a.csv", "url_env": "DB"}, "`url_env` only applies to `sql` items"),
        ({"glob": "*.csv", "params": {"a": 1}}, "`params` only applies to `sql` items"),
        ({"sql": "SELECT 1", "url_env": "DB", "format": "csv"}, "`format` only applies to files"),
        ({"sql": "SELECT 1", "url_env": "DB", "params": {"not a name": 1}}, "is not an identifier"),
        ({"http": {"url": "ftp://x"}}, "must be an http:// or https:// URL"),
        ({"http": {"url": "https://u:pw@api.example/x"}}, "the URL holds a password"),
        ({"http": {"url": "https://api.example/x?api_key=abc"}}, "move it to `params_env`"),
        ({"http": {"url": "https://api.example/x", "params": {"token": "abc"}}}, "move it to `params_env`"),
        ({"http": {"url": "https://api.example/x", "pagination": {}}}, "set exactly one of `cursor"),
        (
            {"http": {"url": "https://api.example/x", "pagination": {"page": {}, "link_header": True}}},
            "(got page, link_header)",
        ),
        ({"http": {"url": "https://api.example/x", "pagination": {"page": {"size": 10}}}}, "set `size_param` and `size` together"),
        ({"http": {"url": "https://api.example/x", "headers_env": {"Authorization": "not-a-var"}}}, "should match pattern"),
        ({"from_output": "Not-A-Task"}, "should match pattern"),
    ],
)
def test_items_spec_names_the_problem(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ItemsSpec.model_validate(raw)
    assert message in str(caught.value)


def test_describe_says_where_items_come_from_without_secrets() -> None:
    sql = ItemsSpec(sql="SELECT id,\n  subject FROM tickets", url_env="TICKETS_DB")
    assert sql.describe() == "SQL on $TICKETS_DB: SELECT id, subject FROM tickets"
    api = ItemsSpec(
        http=HttpItemsSpec(url="https://api.example/v1/tickets", items_field="data", headers_env={"Authorization": "API_TOKEN"},
                           pagination={"cursor": {}}),
    )
    assert api.describe() == "HTTP API https://api.example/v1/tickets (field data), cursor pagination"
    assert ItemsSpec(from_output="list_tickets").describe() == "latest output of task list_tickets"
    assert ItemsSpec(glob="/data/*.jsonl").describe() == "files matching /data/*.jsonl"
    assert ItemsSpec(from_task="score").describe() == "results of score"
    assert [ItemsSpec(**{k: v}).kind for k, v in [("path", "a"), ("glob", "b"), ("from_task", "c"), ("from_output", "d")]] == [
        "path", "glob", "from_task", "from_output",
    ]


# -- glob -----------------------------------------------------------------------------------------


def test_glob_reads_files_in_sorted_order_with_stable_ids(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "catalog"
    tickets = catalog_dir / "data" / "tickets"
    (tickets / "older").mkdir(parents=True)
    (tickets / "b.jsonl").write_text("".join(json.dumps({"subject": f"b{i}"}) + "\n" for i in range(1500)))
    (tickets / "a.csv").write_text("subject\n" + "".join(f"a{i}\n" for i in range(3)))
    (tickets / "older" / "c.jsonl").write_text(json.dumps({"subject": "c0"}) + "\n")
    (tickets / "notes.txt").write_text("not matched")
    (catalog_dir / "c.yaml").write_text(
        textwrap.dedent(
            """\
            agents: [{name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}]
            tasks:
              - name: triage
                owner: support
                agent: a
                shards: 2
                items: {glob: "data/tickets/**/*.*l"}
                prompt: "{{ item.subject }}"
              - name: triage_csv
                owner: support
                agent: a
                shards: 2
                items: {glob: "data/tickets/*.csv", format: csv, id_column: subject}
                prompt: "{{ item.subject }}"
            """
        )
    )
    catalog = load_catalog(catalog_dir)
    assert catalog.problems == ()
    spec = catalog.tasks["triage"].items
    assert spec is not None and spec.glob == str(tickets.resolve() / "**" / "*.*l"), "resolved against the YAML file"

    items, sizes = _read(item_source(spec, task="triage", store=None))
    assert max(sizes) <= 1000
    assert [i.id for i in items[:2]] == ["b.jsonl:0", "b.jsonl:1"]
    assert items[1499].id == "b.jsonl:1499" and items[-1].id == "older/c.jsonl:0"
    assert [i.fields["subject"] for i in items] == [f"b{i}" for i in range(1500)] + ["c0"]

    csv_spec = catalog.tasks["triage_csv"].items
    assert csv_spec is not None
    assert [i.id for i in _read(item_source(csv_spec, task="triage_csv", store=None))[0]] == ["a0", "a1", "a2"]


def test_glob_without_matches_or_with_a_bad_file_names_the_task(tmp_path: Path) -> None:
    with pytest.raises(ItemSourceError, match=r"batch task 'triage', items.glob: no file matches .*nothing-\*\.csv"):
        item_source(ItemsSpec(glob=str(tmp_path / "nothing-*.csv")), task="triage")
    (tmp_path / "broken.jsonl").write_text('{"ok": 1}\nnot json\n')
    source = item_source(ItemsSpec(glob=str(tmp_path / "*.jsonl")), task="triage")
    with pytest.raises(ItemSourceError, match=r"batch task 'triage', items.glob: .*broken.jsonl, line 2: not valid JSON"):
        _read(source)


# -- SQL ------------------------------------------------------------------------------------------


@pytest.fixture
def pg_table(postgres_server_url: str) -> Iterator[tuple[str, str]]:
    """A uniquely named table of 25,000 rows in database `test`; its URL carries an
    application_name, so the test can watch its own session in pg_stat_activity."""
    table = f"items_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(sqlalchemy_url(postgres_server_url))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id int PRIMARY KEY, subject text, amount numeric(10, 2), "
                "created timestamptz, meta jsonb, region text)"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {table} SELECT i, 'ticket ' || i, i * 0.25, "
                "timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute', jsonb_build_object('n', i), "
                "(ARRAY['eu', 'us', 'apac'])[i % 3 + 1] FROM generate_series(1, 25000) AS i"
            )
        )
    try:
        yield table, f"{postgres_server_url}?application_name={table}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_sql_on_postgres_streams_every_row_through_a_server_side_cursor(
    pg_table: tuple[str, str], postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, url = pg_table
    monkeypatch.setenv("TICKETS_DB_URL", url)
    spec = ItemsSpec(sql=f"SELECT id, subject, amount, created, meta FROM {table}", url_env="TICKETS_DB_URL")
    batches = item_source(spec, task="triage")()
    first = next(batches)
    admin = sa.create_engine(sqlalchemy_url(postgres_server_url))
    with admin.connect() as conn:
        running = conn.execute(sa.text("SELECT query FROM pg_stat_activity WHERE application_name = :a"), {"a": table}).scalars().all()
    admin.dispose()
    assert running and re.match(r"(DECLARE|FETCH)", running[0]), f"not a server-side cursor: {running}"
    items, sizes = list(first), [len(first)]
    for batch in batches:
        items.extend(batch)
        sizes.append(len(batch))
    assert len(items) == 25_000 and max(sizes) == 1000
    assert {i.id for i in items} == {str(n) for n in range(1, 25_001)}
    by_id = {i.id: i.fields for i in items}
    seventh = dict(by_id["7"])
    assert dt.datetime.fromisoformat(seventh.pop("created")) == dt.datetime(2024, 1, 1, 0, 7, tzinfo=dt.UTC)
    assert seventh == {"id": 7, "subject": "ticket 7", "amount": "1.75", "meta": {"n": 7}}
    json.dumps([i.fields for i in items[:1000]])  # JSON-friendly


def test_sql_params_id_column_and_errors_on_postgres(pg_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    table, url = pg_table
    monkeypatch.setenv("TICKETS_DB_URL", url)
    spec = ItemsSpec(
        sql=f"SELECT 'T' || id AS ticket, region FROM {table} WHERE region = :region AND id <= :upto",
        url_env="TICKETS_DB_URL",
        params={"region": "eu", "upto": 30},
        id_column="ticket",
    )
    items, _ = _read(item_source(spec, task="triage"))
    assert sorted(i.id for i in items) == sorted(f"T{n}" for n in range(1, 31) if n % 3 == 0)

    bad_query = ItemsSpec(sql="SELECT * FROM no_such_table_here", url_env="TICKETS_DB_URL")
    with pytest.raises(ItemSourceError, match=r"batch task 'triage', items.sql: the query failed: .*no_such_table_here.* does not exist"):
        _read(item_source(bad_query, task="triage"))

    no_id = ItemsSpec(sql=f"SELECT subject FROM {table}", url_env="TICKETS_DB_URL")
    with pytest.raises(ItemSourceError, match=r"items.sql: no column 'id' to take item ids from \(columns: subject\): set `id_column`"):
        _read(item_source(no_id, task="triage"))
    wrong_id = ItemsSpec(sql=f"SELECT id FROM {table}", url_env="TICKETS_DB_URL", id_column="ticket")
    with pytest.raises(ItemSourceError, match=r"items.id_column: no column 'ticket' \(columns: id\)"):
        _read(item_source(wrong_id, task="triage"))
    unbound = ItemsSpec(sql=f"SELECT id FROM {table} WHERE region = :region", url_env="TICKETS_DB_URL")
    with pytest.raises(ItemSourceError, match=r"items.sql: the query failed: .*bind parameter 'region'"):
        _read(item_source(unbound, task="triage"))

    monkeypatch.delenv("TICKETS_DB_URL")
    with pytest.raises(ItemSourceError, match=r"batch task 'triage', items.url_env: environment variable TICKETS_DB_URL is not set"):
        item_source(spec, task="triage")


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("postgresql://postgres:s3cret-pw@127.0.0.1:1/test", "cannot connect to postgresql+psycopg2://postgres:***@127.0.0.1:1/test"),
        ("postgresql://postgres:s3cret-pw@127.0.0.1:notaport/test", "is not a database URL"),
        ("nosuchdialect://postgres:s3cret-pw@127.0.0.1/test", "cannot use the database URL nosuchdialect://postgres:***@"),
    ],
)
def test_sql_errors_never_show_the_password(url: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETS_DB_URL", url)
    spec = ItemsSpec(sql="SELECT 1 AS id", url_env="TICKETS_DB_URL")
    with pytest.raises(ItemSourceError) as caught:
        _read(item_source(spec, task="triage"))
    assert where in str(caught.value)
    assert "s3cret-pw" not in "".join(traceback.format_exception(caught.value))


def test_sql_on_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tickets.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE tickets (ticket_id TEXT, region TEXT, score REAL, raw BLOB)"))
        conn.execute(
            sa.text("INSERT INTO tickets VALUES (:t, :r, :s, :b)"),
            [{"t": f"T{i:05d}", "r": ["eu", "us"][i % 2], "s": i / 2, "b": b"\xff\x00" if i == 0 else b"ok"} for i in range(3000)],
        )
    engine.dispose()
    monkeypatch.setenv("LOCAL_DB", f"sqlite:///{path}")
    spec = ItemsSpec(sql="SELECT * FROM tickets WHERE region = :region", url_env="LOCAL_DB", params={"region": "eu"}, id_column="ticket_id")
    items, sizes = _read(item_source(spec, task="triage", batch_rows=500))
    assert sizes == [500, 500, 500]
    assert [i.id for i in items] == [f"T{i:05d}" for i in range(0, 3000, 2)]
    assert items[0].fields == {"ticket_id": "T00000", "region": "eu", "score": 0.0, "raw": "/wA="}
    assert items[1].fields["raw"] == "ok"


def test_sql_memory_stays_flat(pg_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten times the rows, about the same peak: only one batch is ever held."""
    _, url = pg_table
    monkeypatch.setenv("TICKETS_DB_URL", url)

    def peak_reading(rows: int, traced: bool = True) -> int:
        spec = ItemsSpec(
            sql=f"SELECT g AS id, repeat('x', 200) AS body FROM generate_series(1, {rows}) AS g", url_env="TICKETS_DB_URL"
        )
        source = item_source(spec, task="triage")
        if not traced:  # warms SQLAlchemy's caches, which would count against the first reading
            return sum(len(batch) for batch in source())
        tracemalloc.start()
        try:
            count = sum(len(batch) for batch in source())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == rows
        return peak

    peak_reading(1000, traced=False)
    small, large = peak_reading(3_000), peak_reading(30_000)  # holding 30,000 items would take ~18 MB
    assert large < 1.5 * small, f"peak {small / 1e6:.1f} MB for 3k rows, {large / 1e6:.1f} MB for 30k"


# -- HTTP -----------------------------------------------------------------------------------------

API_ITEMS = [{"id": f"i{n:04d}", "n": n} for n in range(2500)]
API_TOKEN = "Bearer api-test-token"


class _ApiState:
    def __init__(self) -> None:
        self.faults: list[Response] = []
        self.requests: list[str] = []


def _api(state: _ApiState) -> Starlette:
    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            state.requests.append(str(request.url))
            if request.headers.get("authorization") != API_TOKEN:
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            if state.faults:
                return state.faults.pop(0)
            return handler(request)

        return endpoint

    def cursor(request: Request) -> Response:
        start = int(request.query_params.get("after", "0"))
        end = start + int(request.query_params.get("limit", "100"))
        following = str(end) if end < len(API_ITEMS) else None
        return JSONResponse({"data": API_ITEMS[start:end], "meta": {"next": following}})

    def pages(request: Request) -> Response:
        size = int(request.query_params["per_page"])
        page = int(request.query_params["page"])
        return JSONResponse({"results": API_ITEMS[(page - 1) * size : page * size]})

    def linked(request: Request) -> Response:
        page = int(request.query_params.get("p", "0"))
        headers = {"link": f'</linked?p={page + 1}>; rel="next"'} if (page + 1) * 500 < len(API_ITEMS) else {}
        return JSONResponse(API_ITEMS[page * 500 : (page + 1) * 500], headers=headers)

    def link_loop(request: Request) -> Response:
        return JSONResponse(API_ITEMS[:10], headers={"link": '</link_loop?again=1>; rel="next"'})

    def looping(request: Request) -> Response:
        return JSONResponse({"data": API_ITEMS[:10], "meta": {"next": "same"}})

    def ignores_page(request: Request) -> Response:
        return JSONResponse({"results": API_ITEMS[:10]})

    def malformed(request: Request) -> Response:
        return JSONResponse({"data": {"not": "a list"}})

    def html(request: Request) -> Response:
        return PlainTextResponse("<html>maintenance</html>", media_type="text/html")

    def no_ids(request: Request) -> Response:
        return JSONResponse({"data": [{"name": "x"}]})

    handlers = {"/cursor": cursor, "/pages": pages, "/linked": linked, "/looping": looping, "/ignores_page": ignores_page,
                "/malformed": malformed, "/html": html, "/no_ids": no_ids, "/link_loop": link_loop}
    return Starlette(routes=[Route(path, guarded(handler)) for path, handler in handlers.items()])


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningServer, _ApiState]]:
    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    state = _ApiState()
    with serve_in_thread(_api(state), name="items-api") as server:
        yield server, state


def _http(url: str, **extra: Any) -> ItemsSpec:
    return ItemsSpec(http=HttpItemsSpec(url=url, headers_env={"Authorization": "API_TOKEN"}, **extra))


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/cursor", {"items_field": "data", "params": {"limit": 100}, "pagination": {"cursor": {"param": "after", "field": "meta.next"}}}),
        ("/pages", {"items_field": "results", "pagination": {"page": {"param": "page", "start": 1, "size_param": "per_page", "size": 100}}}),
        ("/linked", {"pagination": {"link_header": True}}),
    ],
)
def test_http_reads_every_page(api, path: str, extra: dict[str, Any]) -> None:
    server, state = api
    items, sizes = _read(item_source(_http(server.url + path, **extra), task="sync"))
    assert [i.id for i in items] == [row["id"] for row in API_ITEMS]
    assert items[42].fields == {"id": "i0042", "n": 42}
    assert max(sizes) <= 1000
    pages = {"/cursor": 25, "/pages": 26, "/linked": 5}[path]  # numbered pages end with an empty one
    assert len(state.requests) == pages


def test_http_batches_split_a_large_page(api) -> None:
    server, _ = api
    spec = _http(server.url + "/cursor", items_field="data", params={"limit": 2500})
    _, sizes = _read(item_source(spec, task="sync"))
    assert sizes == [1000, 1000, 500]


def test_http_auth_header_comes_from_the_environment(api, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = api
    anonymous = ItemsSpec(http=HttpItemsSpec(url=server.url + "/cursor", items_field="data"))
    with pytest.raises(ItemSourceError, match=r"batch task 'sync', items.http.url: page 1 \(http://127.0.0.1:\d+/cursor\) answered HTTP 401"):
        _read(item_source(anonymous, task="sync"))
    monkeypatch.delenv("API_TOKEN")
    with pytest.raises(ItemSourceError, match=r"items.http.headers_env: environment variable API_TOKEN is not set"):
        item_source(_http(server.url + "/cursor"), task="sync")


def test_http_retries_429_and_5xx_with_back_off(api) -> None:
    server, state = api
    state.faults = [Response(status_code=500), Response(status_code=429, headers={"retry-after": "1.5"})]
    waits: list[float] = []
    spec = _http(server.url + "/cursor", items_field="data", params={"limit": 2500})
    assert spec.http is not None
    items, _ = _read(http_source("sync", spec.http, sleep=waits.append))
    assert len(items) == 2500
    assert waits == [0.5, 1.5], "exponential back-off, then the server's Retry-After"

    state.faults = [Response(status_code=503)] * 4
    with pytest.raises(ItemSourceError, match=r"items.http.url: page 1 .* failed after 4 attempt\(s\): HTTP 503"):
        _read(http_source("sync", spec.http, sleep=waits.append))


@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        ("/malformed", {"items_field": "data"}, r"items.http.items_field: page 1: 'data' in the response is a JSON object, not a list"),
        ("/malformed", {"items_field": "rows"}, r"items.http.items_field: page 1: the response has no 'rows' \(it holds: data\)"),
        ("/malformed", {}, r"the response is a JSON object, not a list: name the list with `items_field`"),
        ("/html", {}, r"items.http: page 1 \(.*/html\) is not JSON \(text/html; charset=utf-8\): '<html>maintenance</html>'"),
        ("/no_ids", {"items_field": "data"}, r"items.id_column: page 1, item 0 has no 'id' field \(fields: name\): set `id_column`"),
        (
            "/looping",
            {"items_field": "data", "pagination": {"cursor": {"param": "after", "field": "meta.next"}}},
            r"items.http.pagination.cursor: page 2 returned cursor 'same' a second time",
        ),
        (
            "/link_loop",
            {"pagination": {"link_header": True}},
            r"items.http.pagination.link_header: page 2 links to a page already read \(http://127.0.0.1:\d+/link_loop\)",
        ),
        (
            "/ignores_page",
            {"items_field": "results", "pagination": {"page": {"size_param": "per_page", "size": 10}}},
            r"items.http.pagination.page: page=2 returned the same items as page=1",
        ),
    ],
)
def test_http_bad_answers_are_clear_errors(api, path: str, extra: dict[str, Any], message: str) -> None:
    server, _ = api
    with pytest.raises(ItemSourceError, match=message) as caught:
        _read(item_source(_http(server.url + path, **extra), task="sync"))
    assert str(caught.value).startswith("batch task 'sync', items.")


# -- a regular task's output ----------------------------------------------------------------------


def _record_output(store: StateStore, task: str, output: str, key: str | None = None) -> str:
    key = key or f"{task}:{uuid.uuid4().hex}"
    now = utcnow()
    store.claim([Claim(key, task, "demo", "run-1", "manual", None, "v1")])
    store.settle([Settlement(key, task, status.SUCCEEDED, "run-1", outcome="ok", answered_at=now, result=ResultRecord(prompt="p", output=output))])
    return key


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path / 'agent_pipelines.db'}")
    yield store
    store.engine.dispose()


def test_output_list_becomes_items(store: StateStore) -> None:
    rows = [{"ticket": f"T{i}", "subject": f"printer {i}", "tags": ["a"]} for i in range(2500)]
    _record_output(store, "list_tickets", "```json\n" + json.dumps(rows, indent=1) + "\n```")
    items, sizes = _read(item_source(ItemsSpec(from_output="list_tickets", id_column="ticket"), task="triage", store=store))
    assert sizes == [1000, 1000, 500]
    assert [i.id for i in items] == [r["ticket"] for r in rows] and items[3].fields == rows[3]

    _record_output(store, "list_names", ' [ "ada", 7, null , {"id": 3} ] ')
    items, _ = _read(item_source(ItemsSpec(from_output="list_names"), task="triage", store=store))
    assert [(i.id, i.fields) for i in items] == [("0", {"value": "ada"}), ("1", {"value": 7}), ("2", {"value": None}), ("3", {"id": 3})]
    _record_output(store, "list_none", "[]")
    assert _read(item_source(ItemsSpec(from_output="list_none"), task="triage", store=store))[0] == []


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (None, r"items.from_output: task 'upstream' has no successful output yet: run it first"),
        ("Here are the tickets: T1, T2", r"items.from_output: the latest output of 'upstream' \(.*\) is not JSON \(Expecting value, line 1 column 1\)"),
        ('{"tickets": []}', r"the latest output of 'upstream' \(.*\) is a JSON object, not a list"),
        ('[{"id": 1}, {"id": 2} {"id": 3}]', r"is not valid JSON \(expected ',' or ']', line 1\)"),
        ('[{"id": 1}, {"id": 2}', r"is not valid JSON"),
        ('[{"id": 1}] and more', r"has text after the JSON list"),
        ('[{"id": 1}, {"name": "x"}]', r"items.id_column: the latest output of 'upstream' \(.*\), element 1 has no 'id' field \(fields: name\)"),
    ],
)
def test_output_problems_name_the_task(store: StateStore, output: str | None, message: str) -> None:
    if output is not None:
        _record_output(store, "upstream", output)
    with pytest.raises(ItemSourceError, match=message) as caught:
        _read(item_source(ItemsSpec(from_output="upstream", id_column="id"), task="triage", store=store))
    assert str(caught.value).startswith("batch task 'triage', items.")


def test_batch_over_a_task_output_in_a_dagster_run(tmp_path: Path, demo_agent, instance: dg.DagsterInstance) -> None:
    """The asset reads the output through the store resource; without one the run fails with the reason."""
    directory = write_catalog(
        tmp_path / "catalog",
        demo_agent.url,
        """\
        tasks:
          - name: list_tickets
            owner: support
            agent: demo
            prompt: "List the open tickets as a JSON list"
          - name: triage_listed
            owner: support
            agent: demo
            items: {from_output: list_tickets, id_column: ticket}
            shards: 2
            prompt: "Triage {{ item.ticket }}: {{ item.subject }}"
        """,
    )
    catalog = load_catalog(directory)
    assert catalog.problems == ()
    defs = build_definitions(catalog)
    job = defs.resolve_job_def("triage_listed_batch_job")
    tags = {"dagster/asset_partition_range_start": "shard-00", "dagster/asset_partition_range_end": "shard-01"}

    failed = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "batch task 'triage_listed', items.from_output: task 'list_tickets' has no successful output yet" in str(failure.event_specific_data.error)

    store = StateStore.for_instance(instance)
    _record_output(store, "list_tickets", json.dumps([{"ticket": f"T{i}", "subject": f"jam {i}"} for i in range(40)]))
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert result.success
    records = instance.fetch_materializations(dg.AssetKey("triage_listed"), limit=10).records
    frames = [pd.read_parquet(r.asset_materialization.metadata["path"].value) for r in records]
    results = pd.concat(frames)
    assert sorted(results["item_id"]) == sorted(f"T{i}" for i in range(40)) and (results["status"] == "ok").all()
    asset = defs.resolve_assets_def("triage_listed")
    assert asset.metadata_by_key[dg.AssetKey("triage_listed")]["items"].value == "latest output of task list_tickets"


# -- the README -----------------------------------------------------------------------------------


def test_readme_items_sources_example_is_a_valid_catalog(tmp_path: Path) -> None:
    """The YAML of the README's "Items from elsewhere" section loads without a problem."""
    text = PROJECT_README.read_text()
    section = text[text.index("### Items from elsewhere") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml\n") + 8)]
    (tmp_path / "data" / "tickets").mkdir(parents=True)
    (tmp_path / "data" / "tickets" / "2024-06.jsonl").write_text('{"subject": "x"}\n')
    (tmp_path / "agents.yaml").write_text('agents: [{name: support_bot, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}]\n')
    (tmp_path / "tasks.yaml").write_text(block)
    catalog = load_catalog(tmp_path)
    assert catalog.problems == ()
    assert {t.items.kind for t in catalog.batch_tasks.values() if t.items} == {"sql", "http", "from_output", "glob"}
