"""Batch benchmarks: throughput against the raw-client bound, the naive one-run-per-item way,
and peak memory for 10,000 vs 100,000 items (see RESULTS.md for figures and the command).

    .venv/bin/python benchmarks/bench_batch.py all

The fake agents are demo agents in their own processes (4 nodes, answers after 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "bench-token"
NODES = 4
CONCURRENCY = 32  # per node; 4 nodes -> 128 requests in flight
BASE_PORT = 18910


@contextmanager
def agent_processes(latency_ms: float, nodes: int = NODES, base_port: int = BASE_PORT):
    """Demo agents in their own processes on base_port, base_port + 1, ..."""
    env = {**os.environ, "DEMO_AGENT_TOKEN": TOKEN}
    procs = [
        subprocess.Popen(
            [str(BIN / "agent-pipelines"), "demo-agent", "--port", str(base_port + i), "--latency-ms", str(latency_ms), "--jitter-ms", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(nodes)
    ]
    try:
        for i in range(nodes):
            _wait_for_port(base_port + i)
        yield [f"http://127.0.0.1:{base_port + i}" for i in range(nodes)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def _wait_for_port(port: int, timeout_s: float = 20) -> None:
    import socket

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"demo agent on port {port} did not start")


def write_items(path: Path, count: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "subject"])
        for i in range(count):
            writer.writerow([f"T{i:06d}", f"subject {i}"])


def fleet_catalog(task: str, items_yaml: str, nodes: int = NODES, concurrency: int = CONCURRENCY, base_port: int = BASE_PORT) -> str:
    """A fleet of `nodes` demo agents on base_port, base_port + 1, ... and one batch task over it."""
    return textwrap.dedent(
        f"""\
        fleets:
          - name: bench_fleet
            kind: openai_chat
            model: demo-model
            auth_env: DEMO_AGENT_TOKEN
            max_concurrency: {concurrency}
            base_url_template: "http://127.0.0.1:{base_port // 10}{{i}}"
            count: {nodes}
        tasks:
          - name: {task}
            owner: bench
            fleet: bench_fleet
            items: {items_yaml}
            shards: 16
            prompt: "Classify {{{{ item.subject }}}}"
            retries: {{count: 2, delay: 100ms}}
        """
    )


def write_catalog(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_items(directory / "items.csv", count)
    (directory / "batch.yaml").write_text(fleet_catalog("bench_batch", "{path: items.csv, id_column: ticket_id}"))


# --------------------------------------------------------------------------------------------
# the raw-client bound
# --------------------------------------------------------------------------------------------


async def raw_client(urls: list[str], count: int, concurrency: int = CONCURRENCY) -> float:
    """The fastest plain loop: same client (aiohttp), same concurrency, same agents, no Dagster."""
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "Classify subject 0"}]}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    run = uuid.uuid4().hex  # fresh keys: the demo agent answers a repeated key from its cache
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) for _ in urls]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            async with session.post(f"{url}/v1/chat/completions", json=body, headers={**headers, "Idempotency-Key": f"raw-{run}-{i}"}) as response:
                await response.read()

    started = time.perf_counter()
    await asyncio.gather(*(worker(s, u) for s, u in zip(sessions, urls) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    for session in sessions:
        await session.close()
    return elapsed


# --------------------------------------------------------------------------------------------
# agent_pipelines: one single-run backfill of all shards, in a fresh process
# --------------------------------------------------------------------------------------------

RUN_BACKFILL = """
import json, resource, sys, time
t0 = time.perf_counter()
import dagster as dg
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
defs = build_definitions(load_catalog())
job = defs.resolve_job_def("bench_batch_batch_job")
keys = defs.resolve_assets_def("bench_batch").partitions_def.get_partition_keys()
def cpu_s():
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
with dg.DagsterInstance.get() as instance:
    t1, c1 = time.perf_counter(), cpu_s()
    result = job.execute_in_process(instance=instance, tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    t2, c2 = time.perf_counter(), cpu_s()
    records = instance.fetch_materializations(dg.AssetKey("bench_batch"), limit=100).records
    ok = sum(r.asset_materialization.metadata["ok"].value for r in records)
    shard_rate = records[0].asset_materialization.metadata["run_items_per_second"].value
# the run's process and the shard processes it forked (joined, so counted as children)
peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"success": result.success, "total_s": t2 - t0, "run_s": t2 - t1, "ok": ok, "shards_items_per_s": shard_rate,
                  "peak_rss_mb": peak / 1024, "cpu_ms_per_item": (c2 - c1) * 1000 / max(ok, 1)}))
"""


def run_backfill(count: int, catalog_writer=None, task: str = "bench_batch", extra_env: dict | None = None) -> dict:
    """One single-run backfill of every shard of `task`, in a fresh process, timed inside it."""
    with tempfile.TemporaryDirectory(prefix="ap-batch-") as tmp:
        tmp_path = Path(tmp)
        (catalog_writer or write_catalog)(tmp_path / "catalog", count)
        home = tmp_path / "home"
        home.mkdir()
        from agent_pipelines.instance import instance_yaml

        (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
        env = {**os.environ, "DAGSTER_HOME": str(home), "AGENT_PIPELINES_CATALOG": str(tmp_path / "catalog"), "DEMO_AGENT_TOKEN": TOKEN, **(extra_env or {})}
        script = RUN_BACKFILL.replace("bench_batch", task)
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the naive way: one Dagster run per item
# --------------------------------------------------------------------------------------------

NAIVE_JOB = """
import os, httpx, dagster as dg

@dg.op(config_schema={"item": str})
def send_one(context):
    httpx.post(os.environ["NAIVE_URL"] + "/v1/chat/completions",
               json={"model": "demo-model", "messages": [{"role": "user", "content": context.op_config["item"]}]},
               headers={"Authorization": "Bearer " + os.environ["DEMO_AGENT_TOKEN"]}, timeout=30).raise_for_status()

@dg.job(executor_def=dg.in_process_executor)
def one_item_job():
    send_one()

defs = dg.Definitions(jobs=[one_item_job])
"""


def naive_per_item(url: str, sample: int) -> float:
    """Seconds per item when each item is its own `dagster job execute` run, 2 at a time."""
    with tempfile.TemporaryDirectory(prefix="ap-naive-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "naive.py").write_text(NAIVE_JOB)
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {**os.environ, "DAGSTER_HOME": str(home), "NAIVE_URL": url, "DEMO_AGENT_TOKEN": TOKEN}
        started = time.perf_counter()
        pending = list(range(sample))
        running: list[subprocess.Popen] = []
        while pending or running:
            while pending and len(running) < 2:
                i = pending.pop()
                config = json.dumps({"ops": {"send_one": {"config": {"item": f"item {i}"}}}})
                running.append(
                    subprocess.Popen(
                        [str(BIN / "dagster"), "job", "execute", "-f", str(tmp_path / "naive.py"), "-j", "one_item_job", "--config-json", config],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                )
            for proc in list(running):
                if proc.poll() is not None:
                    running.remove(proc)
            time.sleep(0.05)
        return (time.perf_counter() - started) / sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["throughput", "memory", "all"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.section in ("throughput", "all"):
        with agent_processes(latency_ms=50) as urls:
            import uvloop

            # The bound is the fastest plain loop: the standard event loop or uvloop, twice each.
            raw = min(runner(raw_client(urls, 10_000)) for runner in (asyncio.run, uvloop.run) for _ in range(2))
            ours = run_backfill(10_000)
            naive = naive_per_item(urls[0], 10)
        print("\n== batch throughput: 10,000 items, 16 shards, 4 agents answering in 50 ms, 128 in flight")
        print(f"  raw aiohttp loop (no Dagster):        {raw:6.1f} s  {10_000 / raw:7.0f} items/s")
        shards_s = 10_000 / ours["shards_items_per_s"]
        print(f"  agent_pipelines, the shards' step:    {shards_s:6.1f} s  {ours['shards_items_per_s']:7.0f} items/s  "
              f"= {raw / shards_s:.0%} of the raw bound (items read, sent, retried, written to Parquet)")
        print(f"  agent_pipelines, whole Dagster run:   {ours['run_s']:6.1f} s  {10_000 / ours['run_s']:7.0f} items/s  "
              f"= {raw / ours['run_s']:.0%} of the raw bound (+ run creation, events, materializations)")
        print(f"  agent_pipelines, fresh process total: {ours['total_s']:6.1f} s  {10_000 / ours['total_s']:7.0f} items/s  "
              f"= {raw / ours['total_s']:.0%} of the raw bound (import + code load + run)")
        print(f"  items ok: {ours['ok']}")
        print(f"  naive (one Dagster run per item, 2 at a time, sample of 10): {naive:.2f} s/item "
              f"-> 10,000 items ~{naive * 10_000 / 3600:.1f} h; agent_pipelines is {naive * 10_000 / ours['total_s']:.0f}x faster")
    if args.section in ("memory", "all"):
        with agent_processes(latency_ms=5):
            small = run_backfill(10_000)
            large = run_backfill(100_000)
        print("\n== batch memory: peak RSS of the run's process")
        print(f"  10,000 items:  {small['peak_rss_mb']:6.0f} MB  ({small['run_s']:.1f} s, ok {small['ok']})")
        print(f"  100,000 items: {large['peak_rss_mb']:6.0f} MB  ({large['run_s']:.1f} s, ok {large['ok']})")
        print(f"  growth for 10x the items: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
