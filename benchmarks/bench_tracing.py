"""What tracing costs on the hot path: lateness of bursts of due executions with tracing off
(the no-op provider) and on (the default: SDK provider, batch processor, JSON-lines file), in the
same process, alternating rounds so drift hits both alike.

    .venv/bin/python benchmarks/bench_tracing.py --tasks 200 --rounds 6

Each round: `--tasks` tasks due at the same instant, sent by one in-process dispatcher to a demo
agent on 127.0.0.1 answering after `--latency-ms`; lateness is the store's `lateness_ms` (sent
minus due). Prints p50 / p99 / max for both over all rounds and the ratio on / off (1.00 = no
cost); then each round's p99 and the median of the rounds' p99 ratios, on / off within a pair
of adjacent rounds, which other processes' load disturbs less than the pooled figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402

from agent_pipelines.catalog.loader import load_catalog  # noqa: E402
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread  # noqa: E402
from agent_pipelines.scheduling import event_loop  # noqa: E402
from agent_pipelines.scheduling.dispatcher import Dispatcher, Plan  # noqa: E402
from agent_pipelines.scheduling.triggers import Trigger  # noqa: E402
from agent_pipelines.scheduling.work import WorkItem  # noqa: E402
from agent_pipelines.store import StateStore  # noqa: E402
from agent_pipelines.telemetry import tracing  # noqa: E402

TOKEN = "bench-token"
UTC = dt.timezone.utc


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def one_round(catalog, store: StateStore, names: list[str], run_id: str) -> list[float]:
    due = dt.datetime.fromtimestamp(int(time.time()) + 2, UTC)
    items = [WorkItem(catalog.tasks[name], Trigger.scheduled(due), due.timestamp()) for name in names]
    dispatcher = Dispatcher(catalog=catalog, store=store, run_id=run_id, publish=lambda _p: None)
    event_loop.run(dispatcher.run(Plan(items=items)))
    lateness = [store.get_execution(item.key).lateness_ms for item in items]
    assert all(value is not None for value in lateness), "every execution was sent"
    return [float(value) for value in lateness]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per mode (alternating off, on)")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ap-bench-tracing-") as tmp, run_in_thread(
        DemoAgentConfig(latency_ms=args.latency_ms, token=TOKEN, log_limit=1_000_000)
    ) as agent:
        tmp_path = Path(tmp)
        catalog_dir = tmp_path / "catalog"
        catalog_dir.mkdir()
        (catalog_dir / "agents.yaml").write_text(
            "agents:\n  - {name: main, kind: openai_chat, base_url: "
            f"{agent.url}, auth_env: DEMO_AGENT_TOKEN, model: demo-model, max_concurrency: {args.tasks}, timeout: 30s}}\n"
        )
        names = [f"t{i:05d}" for i in range(args.tasks)]
        (catalog_dir / "tasks.yaml").write_text(
            "tasks:\n" + "".join(f"  - {{name: {n}, owner: bench, agent: main, prompt: 'p {{{{ due_time }}}}', schedule: {{every: 60s}}}}\n" for n in names)
        )
        os.environ["DEMO_AGENT_TOKEN"] = TOKEN
        catalog = load_catalog(catalog_dir)
        assert catalog.ok, catalog.problems
        store = StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")
        traced = tracing.provider_from_env({"DAGSTER_HOME": str(tmp_path)})  # the default set-up
        modes = {"off": trace.NoOpTracerProvider(), "on": traced}
        results: dict[str, list[float]] = {"off": [], "on": []}
        per_round: dict[str, list[float]] = {"off": [], "on": []}
        one_round(catalog, store, names, "warm-up")  # imports, connections, templates
        for number in range(args.rounds):
            for mode in ("off", "on") if number % 2 == 0 else ("on", "off"):
                tracing.use_provider(modes[mode])
                lateness = one_round(catalog, store, names, f"{mode}-{number}")
                results[mode] += lateness
                per_round[mode].append(pct(lateness, 99))
        traced.force_flush()
        span_lines = sum(len(f.read_text().splitlines()) for f in (tmp_path / "traces").glob("*.jsonl"))

    print(f"{args.tasks} executions due at once, {args.rounds} rounds per mode, agent latency {args.latency_ms:g} ms")
    print(f"spans written by the 'on' rounds: {span_lines}")
    print("| tracing | p50 lateness | p99 lateness | max | mean |")
    print("|---|---|---|---|---|")
    for mode, values in results.items():
        print(f"| {mode} | {pct(values, 50):.1f} ms | {pct(values, 99):.1f} ms | {max(values):.1f} ms | {statistics.mean(values):.1f} ms |")
    off, on = results["off"], results["on"]
    print(f"ratio on/off: p50 {pct(on, 50) / pct(off, 50):.2f}x, p99 {pct(on, 99) / pct(off, 99):.2f}x, mean {statistics.mean(on) / statistics.mean(off):.2f}x")
    for mode, values in per_round.items():
        print(f"p99 per round, {mode}: {' '.join(f'{value:.0f}' for value in values)} ms")
    pairs = [on_p99 / off_p99 for on_p99, off_p99 in zip(per_round["on"], per_round["off"])]
    print(f"p99 ratio on/off per pair of rounds: median {statistics.median(pairs):.2f}x (min {min(pairs):.2f}x, max {max(pairs):.2f}x)")


if __name__ == "__main__":
    main()
