"""Where a batch task's items come from, as `ItemSource`s: a file, a glob of files, a SQL query,
a paginated JSON API, another batch task's results, or a regular task's latest output.

Every source yields lists of at most `batch_rows` items and holds no more than one list (and one
database partition or API page) at a time, so memory stays flat at any number of rows. Item ids
are stable between runs (a column value, or a position that does not move: a row of a file, an
element of a stored output), because a re-run finds the items it already did by id.

Sources run in a worker thread (`BatchRunner._split`), so they use blocking clients. Errors
raise `ItemSourceError`, which names the task and the `items` field at fault; secrets (the
database password, header values) never appear in them.
"""

from __future__ import annotations

import glob as globbing
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from agent_pipelines.batch.items import Item, _plain, read_item_batches
from agent_pipelines.batch.runner import READ_BATCH_ROWS, ItemSource, file_source, results_source
from agent_pipelines.catalog.item_sources import HttpItemsSpec, ItemsSpec
from agent_pipelines.store import StateStore, sqlalchemy_url

__all__ = [
    "ItemSourceError",
    "file_source",
    "glob_source",
    "http_source",
    "item_source",
    "output_source",
    "results_source",
    "sql_source",
]

#: Id column of `sql` and `http` items when `id_column` is not set.
DEFAULT_ID_COLUMN = "id"
#: First retry delay of an HTTP request (doubling), and the most any one wait may last.
HTTP_RETRY_BASE_S = 0.5
HTTP_MAX_RETRY_WAIT_S = 60.0
_GLOB_MAGIC = re.compile(r"[*?[]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_CODE_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*)\n[ \t]*```\s*$", re.DOTALL)


class ItemSourceError(ValueError):
    """A batch task's items cannot be read; the message names the task and the `items` field."""

    def __init__(self, task: str, field: str, message: str) -> None:
        super().__init__(f"batch task {task!r}, items.{field}: {message}")


def item_source(
    items: ItemsSpec,
    *,
    task: str,
    store: StateStore | None = None,
    results_path: Callable[[], Path | str] | None = None,
    batch_rows: int = READ_BATCH_ROWS,
) -> ItemSource:
    """The source `items` describes. What can be checked cheaply (environment variables, that an
    upstream result exists) is checked here, so a run fails before it contacts any agent."""
    if items.path is not None:
        return file_source(items.path, items.format, items.id_column)
    if items.glob is not None:
        return glob_source(task, items.glob, fmt=items.format, id_column=items.id_column, batch_rows=batch_rows)
    if items.sql is not None:
        assert items.url_env is not None  # ItemsSpec requires it with `sql`
        return sql_source(
            task, items.sql, url_env=items.url_env, params=items.params, id_column=items.id_column, batch_rows=batch_rows
        )
    if items.http is not None:
        return http_source(task, items.http, id_column=items.id_column, batch_rows=batch_rows)
    if items.from_task is not None:
        if results_path is None:
            raise ItemSourceError(task, "from_task", "no results location was given for the upstream batch task")
        path = Path(results_path())
        if not path.exists():
            raise ItemSourceError(
                task, "from_task", f"batch task {items.from_task!r} has no combined results yet ({path}): materialize them first"
            )
        return results_source([str(path)])
    assert items.from_output is not None
    if store is None:
        raise ItemSourceError(task, "from_output", "reading a task's output needs the state store")
    return output_source(task, items.from_output, store, id_column=items.id_column, batch_rows=batch_rows)


# -- glob ----------------------------------------------------------------------------------------


def glob_source(
    task: str, pattern: str, *, fmt: str | None = None, id_column: str | None = None, batch_rows: int = READ_BATCH_ROWS
) -> ItemSource:
    """Every file matching the (absolute) `pattern`, in sorted order, each streamed in turn.

    Without `id_column` an item's id is `<file>:<row>`, the file relative to the pattern's
    fixed directory (`data/tickets` for `data/tickets/**/*.jsonl`): ids stay the same when the
    catalog moves, and adding a file does not renumber the others.
    """
    base = _fixed_directory(pattern)

    def files() -> list[tuple[str, Path]]:
        found = [Path(p) for p in globbing.glob(pattern, recursive=True)]
        named = sorted((p.relative_to(base).as_posix(), p) for p in found if p.is_file())
        if not named:
            raise ItemSourceError(task, "glob", f"no file matches {pattern}")
        return named

    files()  # fail now, before the run contacts any agent

    def batches() -> Iterator[list[Item]]:
        for relative, path in files():
            try:
                for batch in read_item_batches(path, format=fmt, id_column=id_column, batch_rows=batch_rows):
                    yield batch if id_column else [Item(id=f"{relative}:{item.id}", fields=item.fields) for item in batch]
            except (ValueError, OSError) as exc:
                raise ItemSourceError(task, "glob", str(exc)) from None

    return batches


def _fixed_directory(pattern: str) -> Path:
    """The directory part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts) - 1)
    return Path(*parts[:first_magic]) if first_magic else Path(".")


# -- SQL -----------------------------------------------------------------------------------------


def sql_source(
    task: str,
    sql: str,
    *,
    url_env: str,
    params: Mapping[str, Any] | None = None,
    id_column: str | None = None,
    batch_rows: int = READ_BATCH_ROWS,
) -> ItemSource:
    """The rows of a query, fetched `batch_rows` at a time through a server-side cursor.

    The database URL is read from `$url_env` when the rows are read, and shown only with its
    password hidden. Rows need an id column (`id_column`, default `id`): a query's row order is
    not stable, so a row number would not identify a row from one run to the next.
    """
    _env_value(task, "url_env", url_env)  # fail now when it is not set

    def batches() -> Iterator[list[Item]]:
        url = _database_url(task, url_env)
        shown = url.render_as_string(hide_password=True)
        try:
            engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ItemSourceError(task, "url_env", f"cannot use the database URL {shown}: {_redacted(exc, url)}") from None
        try:
            try:
                connection = engine.connect()
            except sa.exc.DBAPIError as exc:
                raise ItemSourceError(task, "url_env", f"cannot connect to {shown}: {_redacted(exc.orig, url)}") from None
            with connection:
                yield from _query_batches(task, connection, sql, params or {}, id_column, batch_rows, url)
        finally:
            engine.dispose()

    return batches


def _query_batches(
    task: str,
    connection: sa.Connection,
    sql: str,
    params: Mapping[str, Any],
    id_column: str | None,
    batch_rows: int,
    url: sa.URL,
) -> Iterator[list[Item]]:
    streaming = connection.execution_options(stream_results=True, yield_per=batch_rows)
    try:
        result = streaming.execute(sa.text(sql), dict(params))
        if not result.returns_rows:
            raise ItemSourceError(task, "sql", "the statement returns no rows: items come from a SELECT")
        columns = list(map(str, result.keys()))
        duplicated = sorted({name for name in columns if columns.count(name) > 1})
        if duplicated:
            raise ItemSourceError(task, "sql", f"the query returns column(s) {', '.join(map(repr, duplicated))} twice: alias them (AS ...)")
        key = _id_column(task, "sql", id_column, columns, "column")
        row_number = 0
        for rows in result.partitions(batch_rows):
            batch = []
            for row in rows:
                fields = {name: _plain(bytes(value) if isinstance(value, memoryview) else value) for name, value in zip(columns, row)}
                batch.append(Item(id=_required_id(task, "sql", fields, key, f"row {row_number}"), fields=fields))
                row_number += 1
            yield batch
    except sa.exc.StatementError as exc:
        raise ItemSourceError(task, "sql", f"the query failed: {_redacted(exc.orig, url)}") from None


def _database_url(task: str, url_env: str) -> sa.URL:
    value = sqlalchemy_url(_env_value(task, "url_env", url_env))
    try:
        return sa.make_url(value)
    except (sa.exc.ArgumentError, ValueError):  # the message may repeat the URL, password included
        raise ItemSourceError(
            task, "url_env", f"${url_env} is not a database URL (expected e.g. postgresql://user:password@host/db or sqlite:///file.db)"
        ) from None


def _redacted(error: BaseException | None, url: sa.URL) -> str:
    text = " ".join(str(error).split()) if error is not None else "unknown error"
    return text.replace(url.password, "***") if url.password else text


# -- HTTP ----------------------------------------------------------------------------------------


def http_source(
    task: str,
    spec: HttpItemsSpec,
    *,
    id_column: str | None = None,
    batch_rows: int = READ_BATCH_ROWS,
    sleep: Callable[[float], None] = time.sleep,
) -> ItemSource:
    """The elements of a JSON API's list, page after page, until a page comes back empty or names
    no next page. A cursor or `Link` URL seen before, or a page number answered with the same
    items as the page before, is an error: following it would loop for ever."""
    for field, variables in (("headers_env", spec.headers_env), ("params_env", spec.params_env)):
        for variable in variables.values():
            _env_value(task, f"http.{field}", variable)  # fail now when one is not set

    def batches() -> Iterator[list[Item]]:
        headers = {name: _env_value(task, "http.headers_env", var) for name, var in spec.headers_env.items()}
        params = {**spec.params, **{name: _env_value(task, "http.params_env", var) for name, var in spec.params_env.items()}}
        key = id_column or DEFAULT_ID_COLUMN
        with httpx.Client(timeout=spec.timeout, headers=headers, follow_redirects=True) as client:
            fetch = _Fetcher(task, client, spec, sleep)
            for page, entries in _pages(fetch, spec, params):
                items = [_http_item(task, entry, key, id_column, page, index) for index, entry in enumerate(entries)]
                for start in range(0, len(items), batch_rows):
                    yield items[start : start + batch_rows]

    return batches


class _Fetcher:
    """GET with retries of 429, 5xx and unanswered requests (honouring Retry-After)."""

    def __init__(self, task: str, client: httpx.Client, spec: HttpItemsSpec, sleep: Callable[[float], None]) -> None:
        self.task = task
        self.client = client
        self.spec = spec
        self.sleep = sleep

    def __call__(self, url: str, params: Mapping[str, Any], page: int) -> tuple[Any, httpx.Response]:
        where = f"page {page} ({_without_query(url)})"
        for attempt in range(self.spec.retries + 1):
            wait = HTTP_RETRY_BASE_S * 2**attempt
            try:
                # params=None, not {}: httpx would replace the URL's own query (a `Link` URL's) with nothing
                response = self.client.get(url, params=dict(params) or None)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                    wait = _retry_after(response) or wait
                elif response.status_code >= 400:
                    raise ItemSourceError(
                        self.task, "http.url", f"{where} answered HTTP {response.status_code}: {_snippet(response.text)}"
                    )
                else:
                    return self._json(response, where), response
            if attempt == self.spec.retries:
                raise ItemSourceError(self.task, "http.url", f"{where} failed after {attempt + 1} attempt(s): {problem}")
            self.sleep(min(wait, HTTP_MAX_RETRY_WAIT_S))
        raise AssertionError("unreachable")

    def _json(self, response: httpx.Response, where: str) -> Any:
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise ItemSourceError(self.task, "http", f"{where} is not JSON ({kind}): {_snippet(response.text)}") from None


def _pages(fetch: _Fetcher, spec: HttpItemsSpec, params: dict[str, Any]) -> Iterator[tuple[int, list[Any]]]:
    paging = spec.pagination
    url = spec.url
    page = 1
    if paging is None:
        body, _ = fetch(url, params, page)
        yield page, _list_at(fetch.task, body, spec.items_field, page)
        return
    if paging.cursor is not None:
        seen: set[str] = set()
        while True:
            body, _ = fetch(url, params, page)
            entries = _list_at(fetch.task, body, spec.items_field, page)
            if not entries:
                return
            yield page, entries
            cursor = _dig(body, paging.cursor.field)
            if cursor is None or cursor == "":
                return
            if not isinstance(cursor, (str, int, float)):
                raise ItemSourceError(
                    fetch.task, "http.pagination.cursor.field", f"page {page}: {paging.cursor.field} is a {type(cursor).__name__}, not a cursor"
                )
            if str(cursor) in seen:
                raise ItemSourceError(
                    fetch.task,
                    "http.pagination.cursor",
                    f"page {page} returned cursor {str(cursor)[:80]!r} a second time: following it would loop for ever",
                )
            seen.add(str(cursor))
            params = {**params, paging.cursor.param: cursor}
            page += 1
    elif paging.page is not None:
        number, previous = paging.page.start, None
        sizes = {paging.page.size_param: paging.page.size} if paging.page.size_param else {}
        while True:
            body, _ = fetch(url, {**params, **sizes, paging.page.param: number}, page)
            entries = _list_at(fetch.task, body, spec.items_field, page)
            if not entries:
                return
            if entries == previous:
                raise ItemSourceError(
                    fetch.task,
                    "http.pagination.page",
                    f"{paging.page.param}={number} returned the same items as {paging.page.param}={number - 1}: "
                    f"does the API read the `{paging.page.param}` parameter?",
                )
            previous = entries
            yield page, entries
            number += 1
            page += 1
    else:
        visited: set[str] = set()
        while True:
            body, response = fetch(url, params, page)
            entries = _list_at(fetch.task, body, spec.items_field, page)
            if not entries:
                return
            yield page, entries
            following = response.links.get("next", {}).get("url")
            if not following:
                return
            visited.add(str(response.url))
            url, params = str(response.url.join(following)), {}  # the next link carries its own query
            if url in visited:
                raise ItemSourceError(
                    fetch.task, "http.pagination.link_header", f"page {page} links to a page already read ({_without_query(url)}): following it would loop for ever"
                )
            page += 1


def _list_at(task: str, body: Any, dotted: str | None, page: int) -> list[Any]:
    value = body if dotted is None else _dig(body, dotted, missing=_MISSING)
    if value is _MISSING:
        fields = ", ".join(map(str, body)) if isinstance(body, dict) else type(body).__name__
        raise ItemSourceError(task, "http.items_field", f"page {page}: the response has no {dotted!r} (it holds: {fields or 'nothing'})")
    if value is None:
        return []
    if not isinstance(value, list):
        what = f"{dotted!r} in the response" if dotted else "the response"
        hint = "" if dotted else ": name the list with `items_field`"
        raise ItemSourceError(task, "http.items_field", f"page {page}: {what} is a JSON {_json_type(value)}, not a list{hint}")
    return value


_MISSING = object()


def _dig(body: Any, dotted: str, missing: Any = None) -> Any:
    value = body
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return missing
    return value


def _http_item(task: str, entry: Any, key: str, id_column: str | None, page: int, index: int) -> Item:
    where = f"page {page}, item {index}"
    if not isinstance(entry, dict):
        raise ItemSourceError(task, "http.items_field", f"{where} is a JSON {_json_type(entry)}, not an object")
    fields = {str(k): v for k, v in entry.items()}
    hint = "" if id_column else ": set `id_column` to the field that identifies an item"
    return Item(id=_required_id(task, "id_column", fields, key, where, hint), fields=fields)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _without_query(url: str) -> str:
    return str(httpx.URL(url).copy_with(query=None, fragment=None))


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 200 else text[:199] + "…")


# -- a regular task's output ---------------------------------------------------------------------


def output_source(
    task: str, upstream: str, store: StateStore, *, id_column: str | None = None, batch_rows: int = READ_BATCH_ROWS
) -> ItemSource:
    """The elements of `upstream`'s latest successful output, a JSON list (in a ```json fence
    or not). Objects are items as they are; other values become `{"value": x}`. Without
    `id_column` an item's id is its position in the list.

    The execution is chosen now, once: a newer output arriving during the run changes nothing.
    The list is decoded one element at a time, so only the output text and one batch are held.
    """
    execution = store.latest_success(upstream)
    if execution is None:
        raise ItemSourceError(task, "from_output", f"task {upstream!r} has no successful output yet: run it first")
    key = execution.idempotency_key

    def batches() -> Iterator[list[Item]]:
        record = store.results([key]).get(key)
        if record is None or record.output is None:
            raise ItemSourceError(task, "from_output", f"the latest successful execution of {upstream!r} ({key}) left no output in the store")
        where = f"the latest output of {upstream!r} ({key})"
        batch: list[Item] = []
        for position, value in enumerate(_json_list(task, record.output, where)):
            fields = {str(k): v for k, v in value.items()} if isinstance(value, dict) else {"value": value}
            item_id = str(position) if id_column is None else _required_id(task, "id_column", fields, id_column, f"{where}, element {position}")
            batch.append(Item(id=item_id, fields=fields))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
        if batch:
            yield batch

    return batches


def _json_list(task: str, text: str, where: str) -> Iterator[Any]:
    """The elements of a JSON array, decoded one at a time from `text`."""
    fenced = _CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder()

    def fail(message: str) -> ItemSourceError:
        return ItemSourceError(task, "from_output", f"{where} {message}")

    def space(at: int) -> int:
        match = _JSON_SPACE.match(text, at)
        assert match is not None
        return match.end()

    position = space(0)
    if position == len(text):
        raise fail("is empty, not a JSON list")
    if text[position] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise fail(f"is not JSON ({exc.msg}, line {exc.lineno} column {exc.colno}): {_snippet(text[:80])}") from None
        raise fail(f"is a JSON {_json_type(value)}, not a list")
    position = space(position + 1)
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            try:
                value, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as exc:
                raise fail(f"is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
            yield value
            position = space(position)
            if text.startswith(",", position):
                position = space(position + 1)
            elif text.startswith("]", position):
                position += 1
                break
            else:
                line = text.count("\n", 0, position) + 1
                raise fail(f"is not valid JSON (expected ',' or ']', line {line})")
    if space(position) != len(text):
        raise fail("has text after the JSON list")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- shared --------------------------------------------------------------------------------------


def _env_value(task: str, field: str, variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value.strip():
        raise ItemSourceError(task, field, f"environment variable {variable} is not set (it is read when a run starts)")
    return value


def _id_column(task: str, field: str, id_column: str | None, present: list[str], noun: str) -> str:
    key = id_column or DEFAULT_ID_COLUMN
    if key in present:
        return key
    listed = ", ".join(present) or "none"
    if id_column is None:
        raise ItemSourceError(
            task, field, f"no {noun} {key!r} to take item ids from ({noun}s: {listed}): set `id_column`, or select one AS id"
        )
    raise ItemSourceError(task, "id_column", f"no {noun} {key!r} ({noun}s: {listed})")


def _required_id(task: str, field: str, fields: Mapping[str, Any], key: str, where: str, hint: str = "") -> str:
    if key not in fields:
        raise ItemSourceError(task, field, f"{where} has no {key!r} field (fields: {', '.join(fields) or 'none'}){hint}")
    value = fields.get(key)
    item_id = "" if value is None else value if isinstance(value, str) else str(value)
    if not item_id.strip():
        raise ItemSourceError(task, field, f"{where}: empty id in {key!r}")
    return item_id
