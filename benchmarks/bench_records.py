"""Execution records at 1,000,000 executions on PostgreSQL: a page of `executions list` with the
0011 indexes and keyset cursors, against the same searches without them (and OFFSET paging for
deep pages), in the same process on the same data.

    .venv/bin/python benchmarks/bench_records.py [--rows 1000000] [--keep]

Generates the rows with COPY into a database of its own (`bench_records`, dropped at the end
unless --keep) on $AGENT_PIPELINES_TEST_POSTGRES_URL's server (default 127.0.0.1:5432), starts
without the 0011 indexes (the baseline: the schema before this change), then builds them the
way a large installation does (`build_online`, CREATE INDEX CONCURRENTLY), times each build and
measures again. Prints p50/p95 per page for each filter and the ratio baseline / indexed.
Then retention: 40 archive batches of 1,000 rows while a writer claims and settles executions
the way the scheduler does, against the same writer alone.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import itertools
import os
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_pipelines.records.indexes import RECORD_INDEXES, build_online, drop_all
from agent_pipelines.store import (
    Claim,
    ResultRecord,
    Settlement,
    StateStore,
    schema,
    sqlalchemy_url,
)
from agent_pipelines.store.records import RecordFilter, _where

ADMIN_URL = os.environ.get("AGENT_PIPELINES_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DB_NAME = "bench_records"
PAGE = 50
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
DAYS = 90
TASKS = [f"{prefix}_{i:04d}" for prefix, n in (("daily", 300), ("hourly", 400), ("report", 300)) for i in range(n)]
AGENTS = [f"agent_{i:02d}" for i in range(20)]
TEAMS = [f"team:t{i}" for i in range(10)]
OWNER_OF = {task: TEAMS[i % len(TEAMS)] for i, task in enumerate(TASKS)}
STATUSES = [("succeeded", 90), ("failed", 6), ("unknown", 1), ("missed", 2), ("skipped", 1)]
TRIGGERS = [("schedule", 85), ("event", 10), ("manual", 3), ("upstream", 2)]
ERRORS = ["timeout after 30s waiting for the agent", "HTTP 500 from agent", "connection refused", "rate limited (429)"]
WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(i + 7).randint(3, 9))) for i in range(3000)
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _weighted(choices: list[tuple[str, int]]) -> list[str]:
    return [value for value, weight in choices for _ in range(weight)]


def generate(engine: sa.Engine, rows: int, seed: int = 7) -> None:
    """Executions spread over 90 days; a result for each one that was sent; outputs of ~25 words
    with 'timeout' in 1% of them and 'zeppelin' in 0.05%."""
    rng = random.Random(seed)
    statuses, triggers = _weighted(STATUSES), _weighted(TRIGGERS)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        chunk = 100_000
        for start in range(0, rows, chunk):
            ex, res = io.StringIO(), io.StringIO()
            ew, rw = csv.writer(ex), csv.writer(res)
            for i in range(start, min(rows, start + chunk)):
                task = TASKS[rng.randrange(len(TASKS))]
                created = NOW - dt.timedelta(seconds=DAYS * 86400 * (1 - i / rows) + rng.random())
                status = statuses[rng.randrange(100)]
                key = f"{task}:{created.strftime('%Y%m%dT%H%M%S.%f')}:{i}"
                error = rng.choice(ERRORS) if status in ("failed", "unknown") else ""
                ew.writerow([
                    key, task, AGENTS[zlib.crc32(task.encode()) % len(AGENTS)], f"run{i // 500:08d}", triggers[rng.randrange(100)],
                    created.isoformat(), f"v{zlib.crc32(task.encode()) % 97:02d}{i * 2 // rows}", status,
                    {"succeeded": "ok", "failed": "failed", "unknown": "unknown"}.get(status, ""), 1, error,
                    round(rng.uniform(200, 4000), 1), round(rng.uniform(0, 0.05), 5), created.isoformat(), created.isoformat(),
                    created.isoformat(), round(rng.uniform(0, 30), 2),
                ])  # fmt: skip
                if status in ("succeeded", "failed", "unknown"):
                    words = rng.choices(WORDS, k=25)
                    roll = rng.random()
                    if roll < 0.01:
                        words[rng.randrange(25)] = "Timeout"
                    elif roll < 0.0105:
                        words[rng.randrange(25)] = "zeppelin"
                    rw.writerow([key, task, "prompt", " ".join(words), "demo-model", 100, 50, created.isoformat(), created.isoformat()])
            ex.seek(0)
            res.seek(0)
            cursor.copy_expert(
                "COPY agent_pipelines_executions (idempotency_key, task, agent, run_id, trigger, due_time, prompt_version,"
                " status, outcome, attempts, error, latency_ms, cost, created_at, updated_at, sent_at, lateness_ms)"
                " FROM STDIN WITH (FORMAT csv, NULL '')",
                ex,
            )
            cursor.copy_expert(
                "COPY agent_pipelines_results (idempotency_key, task, prompt, output, model, tokens_in, tokens_out, created_at,"
                " execution_created_at)"
                " FROM STDIN WITH (FORMAT csv, NULL '')",
                res,
            )
            raw.commit()
            print(f"  {min(rows, start + chunk):,} rows", flush=True)
    finally:
        raw.close()


def _filters() -> dict[str, RecordFilter]:
    team = TEAMS[3]
    return {
        "no filter": RecordFilter(),
        "one task": RecordFilter(tasks=("hourly_0123",)),
        "task glob daily_*": RecordFilter(tasks=("daily_*",)),
        "owner (100 tasks)": RecordFilter(only_tasks=frozenset(t for t, o in OWNER_OF.items() if o == team)),
        "agent": RecordFilter(agents=("agent_07",)),
        "status failed + last 7 days": RecordFilter(statuses=("failed",), since=NOW - dt.timedelta(days=7)),
        "status unknown (1%)": RecordFilter(statuses=("unknown",)),
        "trigger manual": RecordFilter(triggers=("manual",)),
        "prompt version": RecordFilter(prompt_versions=("v421",)),
        "text 'timeout' (1% of outputs, 1.7% of errors)": RecordFilter(text="timeout"),
        "text 'zeppelin' (0.05% of outputs)": RecordFilter(text="zeppelin"),
        "text, a word in 0.8% of outputs": RecordFilter(text=WORDS[5]),
        "status failed + text 'timeout' + 2 days": RecordFilter(statuses=("failed",), text="timeout", since=NOW - dt.timedelta(days=2)),
    }


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def walk(store: StateStore, wanted: RecordFilter, pages: int, start_cursor: str | None = None) -> list[float]:
    """Follow `pages` pages of cursors; each page's time in ms."""
    times: list[float] = []
    cursor = start_cursor
    for _ in range(pages):
        started = time.perf_counter()
        page = store.search_executions(wanted, limit=PAGE, cursor=cursor)
        times.append((time.perf_counter() - started) * 1000)
        cursor = page.next_cursor
        if cursor is None:
            break
    return times


def offset_page(engine: sa.Engine, wanted: RecordFilter, offset: int) -> float:
    """The OFFSET way to page deep: read and discard `offset` rows first."""
    table = schema.executions
    statement = (
        sa.select(table)
        .where(*_where(table, wanted))
        .order_by(table.c.created_at.desc(), table.c.idempotency_key.desc())
        .offset(offset)
        .limit(PAGE)
    )

    def run() -> None:
        with engine.connect() as conn:
            conn.execute(statement).all()

    return _timed(run)


def deep_cursor(store: StateStore, depth: int) -> str:
    """The cursor of the row `depth` rows down (what following depth / PAGE pages would give)."""
    table = schema.executions
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.created_at, table.c.idempotency_key)
            .order_by(table.c.created_at.desc(), table.c.idempotency_key.desc())
            .offset(depth - 1)
            .limit(1)
        ).one()
    from agent_pipelines.store.records import encode_cursor

    return encode_cursor(row.created_at, row.idempotency_key)


def measure(store: StateStore, pages: int, rounds: int, deep: str, offset_depth: int | None) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    for name, wanted in _filters().items():
        figures[name] = [t for _ in range(rounds) for t in walk(store, wanted, pages)]
    figures["deep pages (from row 500,000)"] = (
        [offset_page(store.engine, RecordFilter(), offset_depth) for _ in range(pages * rounds)]
        if offset_depth is not None
        else [t for _ in range(rounds) for t in walk(store, RecordFilter(), pages, deep)]
    )
    return figures


def _writer(store: StateStore, stop: threading.Event, latencies: list[float], prefix: str) -> None:
    """What the scheduler does per execution: claim it, then settle it with its result."""
    i = 0
    while not stop.is_set():
        key = f"{prefix}:{i}"
        task = TASKS[i % len(TASKS)]
        started = time.perf_counter()
        store.claim([Claim(key, task, "agent_00", "bench-run", "schedule", None, "v1")])
        store.settle([Settlement(key, task, "succeeded", "bench-run", latency_ms=1.0, result=ResultRecord(prompt="p", output="fresh output"))])
        latencies.append((time.perf_counter() - started) * 1000)
        i += 1
        time.sleep(0.01)


def retention_section(store: StateStore, batches: int = 40) -> None:
    """Retention's batches (archive, 1,000 rows each) while a writer claims and settles
    executions, against the same writer alone: how long the scheduler's writes wait."""
    cutoff = NOW - dt.timedelta(days=30)
    alone: list[float] = []
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(store, stop, alone, "alone"))
    writer.start()
    time.sleep(10)
    stop.set()
    writer.join()

    during: list[float] = []
    batch_ms: list[float] = []
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(store, stop, during, "during"))
    writer.start()
    moved = 0
    for _ in range(batches):
        started = time.perf_counter()
        moved += store.retire_batch(cutoff, 1000, archive=True)
        batch_ms.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)  # the policy's default pause
    stop.set()
    writer.join()
    print(f"\nretention: {moved:,} executions archived in {batches} batches of 1,000 (keep_days 30 of 90 days of data)")
    print("| | n | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    print(f"| one archive batch (transaction) | {len(batch_ms)} | {pct(batch_ms, 50):.1f} | {pct(batch_ms, 95):.1f} | {max(batch_ms):.1f} |")
    print(f"| claim + settle, writer alone | {len(alone)} | {pct(alone, 50):.1f} | {pct(alone, 95):.1f} | {max(alone):.1f} |")
    print(f"| claim + settle, during retention | {len(during)} | {pct(during, 50):.1f} | {pct(during, 95):.1f} | {max(during):.1f} |")
    print(f"ratio during / alone: p50 {pct(during, 50) / pct(alone, 50):.2f}x, p95 {pct(during, 95) / pct(alone, 95):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    admin = sa.create_engine(sqlalchemy_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{DB_NAME}"'))
    try:
        store = StateStore.for_url(url)
        with store.engine.begin() as conn:
            drop_all(conn)  # the baseline: the schema as it was before revision 0011
        started = time.perf_counter()
        generate(store.engine, args.rows)
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE agent_pipelines_executions"))
            conn.execute(sa.text("VACUUM ANALYZE agent_pipelines_results"))
        print(f"generated {args.rows:,} executions in {time.perf_counter() - started:.0f} s\n", flush=True)

        deep_depth = min(500_000, args.rows // 2)
        print("baseline: no 0011 indexes, OFFSET for deep pages ...", flush=True)
        baseline = measure(store, pages=3, rounds=1, deep="", offset_depth=deep_depth)

        print("\nbuilding the 0011 indexes online (CREATE INDEX CONCURRENTLY):", flush=True)
        marks: list[tuple[str, float]] = []
        build_online(store.engine, report=lambda line: marks.append((line.split()[1], time.perf_counter())))
        marks.append(("end", time.perf_counter()))
        for (name, began), (_, ended) in itertools.pairwise(marks):
            print(f"  {name}: {ended - began:.1f} s", flush=True)
        print(f"  all {len(RECORD_INDEXES)}: {marks[-1][1] - marks[0][1]:.1f} s", flush=True)
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE agent_pipelines_executions"))
            conn.execute(sa.text("ANALYZE agent_pipelines_results"))
        deep = deep_cursor(store, deep_depth)
        measure(store, pages=2, rounds=1, deep=deep, offset_depth=None)  # warm the caches like the baseline's first pass did
        indexed = measure(store, pages=10, rounds=3, deep=deep, offset_depth=None)

        print(f"\n{args.rows:,} executions, {PAGE} rows per page (ms):")
        print("| filter | baseline p50 | baseline p95 | indexed p50 | indexed p95 | n | ratio p95 |")
        print("|---|---|---|---|---|---|---|")
        worst = 0.0
        for name, times in indexed.items():
            base = baseline[name]
            worst = max(worst, pct(times, 95))
            print(
                f"| {name} | {pct(base, 50):,.1f} | {pct(base, 95):,.1f} | {pct(times, 50):.1f} | {pct(times, 95):.1f} | "
                f"{len(times)} | {pct(base, 95) / pct(times, 95):,.0f}x |"
            )
        print(f"\nworst indexed p95: {worst:.1f} ms (target <= 200 ms): {'met' if worst <= 200 else 'NOT met'}")
        retention_section(store)
    finally:
        for cached in list(StateStore._instances.values()):
            cached.engine.dispose()
        StateStore._instances.clear()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
