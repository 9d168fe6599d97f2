"""Searching execution records a page at a time, and moving old ones out (retention).

Pages are keyset pages in (created_at, idempotency_key) order, newest first: the cursor is the
last row's sort key, so page 1,000 costs what page 1 costs (OFFSET would read and throw away every
row before it), and rows inserted while someone pages (always newer) never shift or repeat rows.
Each filter has an index behind it (migration 0011); text matches the output (results table) or
the error, case-insensitively, checked row by row (fast for common words) or found through
trigram indexes on PostgreSQL (fast for rare ones), whichever a probe of the next rows says is
cheaper.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from agent_pipelines.store import schema, status
from agent_pipelines.store.base import StoreBase, aware, utcnow
from agent_pipelines.store.executions import Execution, _execution

#: Characters of the output shown in a page (the full output: `executions show KEY`).
PREVIEW_CHARS = 200
MAX_PAGE = 500
#: Text search (see `_text_page`): rows checked one by one to measure how common the text is,
#: at most this many more walked when that is the cheaper way, and the measured costs (2 cores,
#: PostgreSQL with 128 MB of shared buffers, benchmarks/bench_records.py) that choose the way.
PROBE_ROWS = 2_000
TEXT_WALK_ROWS = 20_000
WALK_US_PER_ROW = 25.0
INDEX_US_PER_MATCH = 8.0


class BadCursor(ValueError):
    """A cursor this store did not hand out (or one from another sort order)."""


@dataclass(frozen=True)
class RecordFilter:
    """What to show; every field left empty means "any". Values within a field are alternatives.

    `tasks` are names or globs (`daily_*`, `report_?`); `only_tasks`, when not None, restricts to
    exactly those names (an owner resolved through the catalog: an empty set matches nothing).
    """

    tasks: tuple[str, ...] = ()
    only_tasks: frozenset[str] | None = None
    agents: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    prompt_versions: tuple[str, ...] = ()
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    text: str | None = None


@dataclass(frozen=True)
class RecordRow:
    execution: Execution
    output_preview: str | None = None
    output_chars: int | None = None
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass(frozen=True)
class RecordPage:
    rows: list[RecordRow] = field(default_factory=list)
    next_cursor: str | None = None  # None: this was the last page


def encode_cursor(created_at: dt.datetime, key: str) -> str:
    utc = aware(created_at).astimezone(dt.timezone.utc)  # type: ignore[union-attr]
    raw = json.dumps([utc.isoformat(), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, key = json.loads(raw)
        return dt.datetime.fromisoformat(created), str(key)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor(f"not a cursor from `executions list`: {cursor!r}") from exc


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def glob_to_like(pattern: str) -> str:
    """`daily_*` -> `daily\\_%`: `*` and `?` are wildcards, everything else literal."""
    return _like_escape(pattern).replace("*", "%").replace("?", "_")


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _where(table: sa.Table, wanted: RecordFilter) -> list[sa.ColumnElement[bool]]:
    """Every filter but the text (see `_text_page`)."""
    c = table.c
    clauses: list[sa.ColumnElement[bool]] = []
    if wanted.tasks:
        exact = [t for t in wanted.tasks if not _is_glob(t)]
        either = [c.task.like(glob_to_like(t), escape="\\") for t in wanted.tasks if _is_glob(t)]
        if exact:
            either.append(c.task.in_(exact))
        clauses.append(sa.or_(*either))
    if wanted.only_tasks is not None:
        clauses.append(c.task.in_(sorted(wanted.only_tasks)) if wanted.only_tasks else sa.false())
    for column, values in ((c.agent, wanted.agents), (c.status, wanted.statuses), (c.trigger, wanted.triggers), (c.prompt_version, wanted.prompt_versions)):
        if values:
            clauses.append(column.in_(list(values)))
    if wanted.since is not None:
        clauses.append(c.created_at >= wanted.since)
    if wanted.until is not None:
        clauses.append(c.created_at < wanted.until)
    return clauses


def _pattern(text: str) -> str:
    return f"%{_like_escape(text)}%"


def _matches_row(rows: sa.FromClause, results: sa.Table, text: str) -> sa.ColumnElement[bool]:
    """Checked row by row: right when most rows walked match (a common word). A correlated scalar
    subquery, because PostgreSQL turns an EXISTS into a hashed set of *every* match first."""
    pattern = _pattern(text)
    output = sa.select(results.c.output).where(results.c.idempotency_key == rows.c.idempotency_key).scalar_subquery()
    return sa.or_(rows.c.error.ilike(pattern, escape="\\"), output.ilike(pattern, escape="\\"))


def _matches_indexed(table: sa.Table, results: sa.Table, text: str, end: tuple[dt.datetime, str]) -> sa.Subquery:
    """The sort key of every match older than `end`, found through the trigram indexes (two
    bitmap scans, not one OR across two tables that no index serves): right when matches are few,
    slow when they are many. An output's sort key is the copy of its execution's created_at kept
    in its result row, so matches are sorted before any execution is looked up (then only the
    page's are)."""
    pattern = _pattern(text)
    sort_key = results.c.execution_created_at
    return sa.union(
        sa.select(sort_key.label("created_at"), results.c.idempotency_key).where(
            results.c.output.ilike(pattern, escape="\\"), sa.tuple_(sort_key, results.c.idempotency_key) < sa.tuple_(*end)
        ),
        sa.select(table.c.created_at, table.c.idempotency_key).where(table.c.error.ilike(pattern, escape="\\"), _before(table, *end)),
    ).subquery("matches")


def _table_rows(conn: sa.Connection, table: sa.Table) -> float:
    """PostgreSQL's row count of the table (as of its last ANALYZE): what an index search reads."""
    rows = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = :name"), {"name": table.name}).scalar()
    return max(float(rows or 0), 0.0)


def _newest_first(table: sa.FromClause) -> tuple[sa.ColumnElement, sa.ColumnElement]:
    return table.c.created_at.desc(), table.c.idempotency_key.desc()


def _before(table: sa.FromClause, created_at: dt.datetime, key: str) -> sa.ColumnElement[bool]:
    return sa.tuple_(table.c.created_at, table.c.idempotency_key) < sa.tuple_(created_at, key)


class ExecutionSearch(StoreBase):
    def search_executions(
        self, wanted: RecordFilter, limit: int = 50, cursor: str | None = None, archived: bool = False
    ) -> RecordPage:
        """One page of executions matching `wanted`, newest first; pass `next_cursor` back for
        the next. `archived`: search what retention moved to the archive tables instead."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        table = schema.executions_archive if archived else schema.executions
        results = schema.results_archive if archived else schema.results
        clauses = _where(table, wanted)
        filtered = bool(clauses)
        if cursor:
            clauses.append(_before(table, *decode_cursor(cursor)))
        with self.engine.connect() as conn:
            if wanted.text:
                found = self._text_page(conn, table, results, clauses, filtered, wanted.text, limit + 1)
            else:
                page = sa.select(table).where(*clauses).order_by(*_newest_first(table)).limit(limit + 1).subquery()
                found = self._with_results(conn, page, results)
        rows = [
            RecordRow(
                execution=_execution(row),
                output_preview=row["output_preview"],
                output_chars=row["output_chars"],
                model=row["result_model"],
                tokens_in=row["tokens_in"],
                tokens_out=row["tokens_out"],
            )
            for row in found[:limit]
        ]
        next_cursor = None
        if len(found) > limit:
            last = rows[-1].execution
            next_cursor = encode_cursor(last.created_at, last.idempotency_key)  # type: ignore[arg-type]
        return RecordPage(rows=rows, next_cursor=next_cursor)

    def _text_page(
        self,
        conn: sa.Connection,
        table: sa.Table,
        results: sa.Table,
        clauses: list[sa.ColumnElement[bool]],
        filtered: bool,
        text: str,
        wanted: int,
    ) -> list[sa.RowMapping]:
        """The newest `wanted` matches in page order, by whichever way is cheaper for this text.

        Two ways: walk rows in page order (other filters applied) checking each, which costs per
        row walked and suits a common word; or find every match through the trigram indexes and
        take the newest, which costs per match and suits a rare one. PostgreSQL's own estimate
        of a word's matches is far off for words outside its statistics, so a probe of the next
        PROBE_ROWS rows measures the share that matches, and that decides how to go on.
        """
        found, end = self._walk(conn, table, results, clauses, text, wanted, PROBE_ROWS if conn.dialect.name == "postgresql" else None)
        if len(found) >= wanted or end is None:
            return found
        share = len(found) / PROBE_ROWS
        rows = _table_rows(conn, table)
        walk_us = WALK_US_PER_ROW * (wanted - len(found)) / share if share else float("inf")
        index_us = INDEX_US_PER_MATCH * share * rows
        if walk_us <= index_us:
            more, end = self._walk(conn, table, results, [*clauses, _before(table, *end)], text, wanted - len(found), TEXT_WALK_ROWS)
            found += more
            if len(found) >= wanted or end is None:
                return found
        matches = _matches_indexed(table, results, text, end)
        if not filtered:
            # Only the page's matches need their execution: PostgreSQL would otherwise look up
            # every match's before sorting (~15 µs each).
            matches = sa.select(matches).order_by(*_newest_first(matches)).limit(wanted - len(found)).subquery("newest")
        rest = (
            sa.select(table)
            .select_from(matches.join(table, table.c.idempotency_key == matches.c.idempotency_key))
            .where(*clauses)
            .order_by(*_newest_first(matches))
            .limit(wanted - len(found))
            .subquery()
        )
        return found + self._with_results(conn, rest, results)

    def _walk(
        self, conn: sa.Connection, table: sa.Table, results: sa.Table, clauses: list[sa.ColumnElement[bool]], text: str, wanted: int, rows: int | None
    ) -> tuple[list[sa.RowMapping], tuple[dt.datetime, str] | None]:
        """Matches among the next `rows` rows (all rows: None), and the sort key of the last row
        walked, or None when the walk reached the end of what the other filters allow."""
        walk = sa.select(table).where(*clauses).order_by(*_newest_first(table)).limit(rows).subquery("walk")
        page = sa.select(walk).where(_matches_row(walk, results, text)).order_by(*_newest_first(walk)).limit(wanted).subquery()
        found = self._with_results(conn, page, results)
        if len(found) >= wanted or rows is None:
            return found, None
        last = conn.execute(
            sa.select(table.c.created_at, table.c.idempotency_key).where(*clauses).order_by(*_newest_first(table)).offset(rows - 1).limit(1)
        ).first()
        return found, (last.created_at, last.idempotency_key) if last is not None else None

    @staticmethod
    def _with_results(conn: sa.Connection, page: sa.Subquery, results: sa.Table) -> list[sa.RowMapping]:
        statement = (
            sa.select(
                page,
                sa.func.substr(results.c.output, 1, PREVIEW_CHARS).label("output_preview"),
                sa.func.length(results.c.output).label("output_chars"),
                results.c.model.label("result_model"),
                results.c.tokens_in,
                results.c.tokens_out,
            )
            .select_from(page.outerjoin(results, results.c.idempotency_key == page.c.idempotency_key))
            .order_by(*_newest_first(page))
        )
        return list(conn.execute(statement).mappings())

    # -- retention --------------------------------------------------------------------------------

    def expired_executions(self, cutoff: dt.datetime, limit: int) -> int:
        """How many terminal executions created before `cutoff` there are (up to `limit`)."""
        table = schema.executions
        inner = sa.select(sa.literal(1)).where(*_expired(table, cutoff)).limit(limit).subquery()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar_one())

    def retire_batch(self, cutoff: dt.datetime, batch_size: int, archive: bool) -> int:
        """Archive (or delete) up to `batch_size` of the oldest terminal executions created before
        `cutoff`, with their results, in one short transaction; returns how many.

        The delete repeats the conditions, so a row taken back meanwhile (a manual re-launch of an
        old execution) is left where it is.
        """
        table, results = schema.executions, schema.results
        now = utcnow()
        with self.engine.begin() as conn:
            keys = list(
                conn.execute(
                    sa.select(table.c.idempotency_key)
                    .where(*_expired(table, cutoff))
                    .order_by(table.c.created_at, table.c.idempotency_key)
                    .limit(batch_size)
                ).scalars()
            )
            if not keys:
                return 0
            gone = [
                dict(row)
                for row in conn.execute(
                    table.delete().where(table.c.idempotency_key.in_(keys), *_expired(table, cutoff)).returning(*table.c)
                ).mappings()
            ]
            gone_keys = [row["idempotency_key"] for row in gone]
            if not gone_keys:
                return 0
            gone_results = [
                dict(row)
                for row in conn.execute(
                    results.delete().where(results.c.idempotency_key.in_(gone_keys)).returning(*results.c)
                ).mappings()
            ]
            if archive:
                # An execution archived, re-run and archived again replaces its earlier copy.
                for archive_table, rows in ((schema.executions_archive, gone), (schema.results_archive, gone_results)):
                    if rows:
                        conn.execute(archive_table.delete().where(archive_table.c.idempotency_key.in_([r["idempotency_key"] for r in rows])))
                        conn.execute(archive_table.insert(), [{**r, "archived_at": now} for r in rows])
        return len(gone)


def _expired(table: sa.Table, cutoff: dt.datetime) -> Sequence[sa.ColumnElement[bool]]:
    """Terminal, created before the cutoff, and not the newest success of its task: downstream
    tasks read their upstream's latest output, however old (a yearly report's last run)."""
    newer = table.alias("newer")
    newer_success = (
        sa.exists()
        .where(newer.c.task == table.c.task, newer.c.status == status.SUCCEEDED, newer.c.created_at > table.c.created_at)
    )
    return (
        table.c.created_at < cutoff,
        table.c.status.in_(sorted(status.TERMINAL)),
        sa.or_(table.c.status != status.SUCCEEDED, newer_success),
    )
