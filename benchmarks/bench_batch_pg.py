"""A batch task over 1,000,000 items read from PostgreSQL, sent to 8 demo-agent nodes: items/s
against the raw async client bound measured in the same run, and the run's peak memory for
100,000 vs 1,000,000 items (see RESULTS.md for figures and the command).

    .venv/bin/python benchmarks/bench_batch_pg.py [--items 1000000] [--small 100000]

The items are a table in a fresh PostgreSQL database (127.0.0.1:5432, dropped afterwards), read
by the task's `items: {sql: ...}` source with a server-side cursor. The bound is a plain aiohttp
loop (same agents, same concurrency, no database, no Dagster), measured before and after the
batch runs; the faster of the two is the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_batch import agent_processes, fleet_catalog, raw_client, run_backfill  # noqa: E402

NODES = 8
CONCURRENCY = 16  # per node: 8 nodes -> 128 requests in flight
BASE_PORT = 18930
LATENCY_MS = 50
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
BOUND_SAMPLE = 200_000


@contextmanager
def items_database(count: int):
    """A fresh database holding `items(id, subject)`; yields its URL."""
    name = f"ap_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(ADMIN_URL).set(database=name)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE items (id text PRIMARY KEY, subject text NOT NULL)"))
            conn.execute(
                sa.text("INSERT INTO items SELECT 'T' || lpad(i::text, 7, '0'), 'printer jam number ' || i FROM generate_series(0, :n - 1) AS i"),
                {"n": count},
            )
        yield url.render_as_string(hide_password=False)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_catalog(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items = f'{{sql: "SELECT id, subject FROM items LIMIT {count}", url_env: BENCH_ITEMS_URL, id_column: id}}'
    (directory / "batch.yaml").write_text(fleet_catalog("bench_pg", items, NODES, CONCURRENCY, BASE_PORT))


def bound(urls: list[str], sample: int) -> float:
    """Items/s of the plain loop (standard event loop and uvloop; the faster)."""
    import uvloop

    return max(sample / runner(raw_client(urls, sample, CONCURRENCY)) for runner in (asyncio.run, uvloop.run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--bound-sample", type=int, default=BOUND_SAMPLE, help="requests per measurement of the bound")
    args = parser.parse_args()
    with items_database(args.items) as url, agent_processes(LATENCY_MS, NODES, BASE_PORT) as urls:
        env = {"BENCH_ITEMS_URL": url}
        print(f"items in PostgreSQL; measuring the bound ({args.bound_sample:,} requests)", flush=True)
        before = bound(urls, args.bound_sample)
        print(f"bound {before:.0f} items/s; batch of {args.small:,}", flush=True)
        small = run_backfill(args.small, write_catalog, "bench_pg", env)
        print(f"{small}; batch of {args.items:,}", flush=True)
        large = run_backfill(args.items, write_catalog, "bench_pg", env)
        print(f"{large}; the bound again", flush=True)
        after = bound(urls, args.bound_sample)
    raw = max(before, after)
    print(f"\n== batch from PostgreSQL: {args.items:,} items, 16 shards, {NODES} demo agents answering in {LATENCY_MS} ms, {NODES * CONCURRENCY} in flight")
    print(f"  raw aiohttp loop (no Dagster, no database): {raw:7.0f} items/s (before {before:.0f}, after {after:.0f}; {args.bound_sample:,} requests each)")
    for label, result, count in (("", large, args.items), ("", small, args.small)):
        shards = result["shards_items_per_s"]
        whole = count / result["run_s"]
        print(
            f"  {count:>9,} items: shards' step {shards:7.0f} items/s = {shards / raw:.0%} of the bound; "
            f"whole run {whole:7.0f} items/s = {whole / raw:.0%}; ok {result['ok']:,}; CPU {result['cpu_ms_per_item']:.2f} ms/item; "
            f"peak RSS {result['peak_rss_mb']:.0f} MB (largest process){label}"
        )
    print(f"  peak memory for {args.items / args.small:.0f}x the items: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x")
    if large["ok"] != args.items:
        raise SystemExit(f"only {large['ok']:,} of {args.items:,} items succeeded")


if __name__ == "__main__":
    main()
