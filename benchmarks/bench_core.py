"""Core v2 against the core it replaced, on the same machine in the same run.

    .venv/bin/python benchmarks/bench_core.py all

The previous core (commit 525c137, the window-run design whose steps materialized at the end of
the window) is checked out into a temporary git worktree and runs from there with the same
virtualenv, daemon, demo agents and workload; then the current tree does the same. Each section
prints both designs' figures and the ratio.

Sections:
  results   answer -> materialization in Dagster; upstream answer -> downstream request;
            failed attempt -> its retry (20 tasks every 10 s, a workflow, a flaky task)
  lateness  due time -> agent request at 1,000 tasks per minute (200 at each minute boundary,
            800 spread over the other seconds)
  events    event accepted by the ingress -> agent request (5 events per second)
  catchup   200 tasks every 2 s, misfire policy `all`: the daemon (and its runs) killed for
            `--outage` minutes, then live lateness while the catch-ups drain
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_pipelines.demo_agent import DemoAgentConfig, RunningDemoAgent, run_in_thread  # noqa: E402
from agent_pipelines.instance import instance_yaml  # noqa: E402
from agent_pipelines.local_platform import Platform, wait_until  # noqa: E402
from agent_pipelines.scheduling.timing import parse_due  # noqa: E402

PREVIOUS_CORE = "525c137"
TOKEN = "bench-token"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def summary(values: list[float], unit: str = "ms") -> str:
    if not values:
        return "no samples"
    return f"n={len(values):5d}  p50={pct(values, 50):9.1f} {unit}  p99={pct(values, 99):9.1f} {unit}  max={max(values):9.1f} {unit}"


def ratio(old: list[float], new: list[float], q: float) -> str:
    if not old or not new:
        return "n/a"
    return f"{pct(old, q) / max(pct(new, q), 1e-3):.1f}x"


# --------------------------------------------------------------------------------------------
# the two designs
# --------------------------------------------------------------------------------------------


@dataclass
class Design:
    name: str
    root: Path

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.root)} if self.root != ROOT else {}


@contextmanager
def designs(which: str) -> Iterator[list[Design]]:
    """The previous core from a worktree of PREVIOUS_CORE, and this tree."""
    with tempfile.TemporaryDirectory(prefix="ap-previous-") as tmp:
        previous = Path(tmp) / "tree"
        found = []
        if which in ("both", "previous"):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(previous), PREVIOUS_CORE], check=True, capture_output=True)
            found.append(Design(f"previous core ({PREVIOUS_CORE})", previous))
        if which in ("both", "current"):
            found.append(Design("core v2 (this tree)", ROOT))
        try:
            yield found
        finally:
            if which in ("both", "previous"):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(previous)], check=False, capture_output=True)


@dataclass
class Bench:
    design: Design
    platform: Platform
    agents: dict[str, RunningDemoAgent] = field(default_factory=dict)

    def requests(self, agent: str = "main") -> list:
        return self.agents[agent].requests()

    def executions(self) -> list[sa.Row]:
        engine = sa.create_engine(f"sqlite:///{self.platform.home / 'agent_pipelines.db'}")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT idempotency_key, status, sent_at, latency_ms, lateness_ms FROM agent_pipelines_executions")).all()
        engine.dispose()
        return rows

    def materialized_at(self, assets: list[str]) -> dict[str, float]:
        """Execution key -> when its materialization reached Dagster's event log."""
        found: dict[str, float] = {}
        with dg.DagsterInstance.from_config(str(self.platform.home)) as instance:
            for asset in assets:
                for record in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
                    key = record.asset_materialization.metadata.get("idempotency_key")
                    if key is not None:
                        found[str(key.value)] = record.timestamp
        return found


@contextmanager
def bench(design: Design, agents_yaml: str, tasks_yaml: str, agent_names: tuple[str, ...] = ("main",), latency_ms: float = 50) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="ap-bench-") as tmp:
        tmp_path = Path(tmp)
        started: dict[str, RunningDemoAgent] = {}
        try:
            for name in agent_names:
                started[name] = run_in_thread(DemoAgentConfig(latency_ms=latency_ms, token=TOKEN, log_limit=1_000_000))
            home = tmp_path / "home"
            home.mkdir()
            (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
            catalog = tmp_path / "catalog"
            catalog.mkdir()
            for name, agent in started.items():
                agents_yaml = agents_yaml.replace(f"URL_{name.upper()}", agent.url)
            (catalog / "agents.yaml").write_text(agents_yaml)
            (catalog / "tasks.yaml").write_text(tasks_yaml)
            workspace = tmp_path / "workspace.yaml"
            workspace.write_text(
                f"load_from:\n  - python_module: {{module_name: agent_pipelines.definitions, working_directory: {design.root}}}\n"
            )
            os.environ.update({"DEMO_AGENT_TOKEN": TOKEN, "BENCH_HOOK_TOKEN": TOKEN})
            p = Platform(home, catalog, started["main"], tmp_path, workspace=workspace)
            p.env.update(design.env())
            try:
                yield Bench(design, p, started)
            finally:
                p.stop()
        finally:
            for agent in started.values():
                agent.stop()


def _agent_lines(names: list[tuple[str, str]], concurrency: int = 64) -> str:
    return "agents:\n" + "".join(
        f"  - {{name: {name}, kind: openai_chat, base_url: URL_{server.upper()}, auth_env: DEMO_AGENT_TOKEN, model: demo-model, "
        f"max_concurrency: {concurrency}, timeout: 30s}}\n"
        for name, server in names
    )


def _due_of(key: str) -> float | None:
    if ":schedule:" not in key:
        return None
    try:
        return parse_due(key.split(":schedule:")[1]).timestamp()
    except ValueError:  # the previous core keyed downstream runs by window: no due time
        return None


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def bench_results(design: Design, minutes: float) -> dict[str, list[float]]:
    tasks = ["tasks:"]
    for i in range(20):
        tasks.append(f"  - {{name: every10_{i:02d}, owner: bench, agent: demo, prompt: 'report {i}', schedule: {{every: 10s}}}}")
    tasks.append("  - {name: up, owner: bench, agent: demo, prompt: 'list incidents', schedule: {every: 10s}}")
    tasks.append("  - {name: down, owner: bench, agent: demo, prompt: 'summarise {{ upstream.up }}', depends_on: [up]}")
    tasks.append(
        "  - {name: flaky, owner: bench, agent: flaky, prompt: 'flaky', schedule: {every: 20s}, "
        "retries: {count: 2, delay: 5s, backoff: constant, jitter: none}}"
    )
    agents_yaml = _agent_lines([("demo", "main"), ("flaky", "flaky")])
    with bench(design, agents_yaml, "\n".join(tasks) + "\n", ("main", "flaky"), latency_ms=300) as b:
        stop = threading.Event()

        def faults() -> None:  # the first attempt of every flaky due time fails with a 503
            while not stop.is_set():
                now = time.time()
                next_due = (int(now) // 20 + 1) * 20
                time.sleep(max(0.0, next_due - 1.0 - now))
                if not stop.is_set():
                    b.agents["flaky"].push_faults([{"status": 503}])
                    time.sleep(1.5)

        injector = threading.Thread(target=faults, daemon=True)
        injector.start()
        b.platform.start_daemon()
        warm = time.time() + 90
        until = warm + minutes * 60
        time.sleep(until - time.time() + 70)  # past the last window's end: every result is in
        stop.set()
        rows = {r.idempotency_key: r for r in b.executions()}
        materialized = b.materialized_at([f"every10_{i:02d}" for i in range(20)] + ["up", "down", "flaky"])
        answered: dict[str, float] = {}
        for key, row in rows.items():
            if row.status == "succeeded" and row.sent_at is not None and row.latency_ms is not None:
                sent = row.sent_at if isinstance(row.sent_at, dt.datetime) else dt.datetime.fromisoformat(str(row.sent_at))
                answered[key] = sent.replace(tzinfo=dt.timezone.utc).timestamp() + row.latency_ms / 1000.0
        delays = [
            materialized[key] - answered[key]
            for key in answered
            if key in materialized and ":flaky:" not in key and (d := _due_of(key)) is not None and warm <= d <= until
        ]
        # downstream request received minus the answer of the upstream execution it followed
        # (the latest upstream answer before it: the previous core reads the latest output too)
        up_answers = sorted(t for key, t in answered.items() if key.startswith("agent-pipelines:up:"))
        down_requests = [r.received_at for r in b.requests("main") if r.headers.get("idempotency-key", "").startswith("agent-pipelines:down:")]
        downstream = []
        for received in down_requests:
            before = [t for t in up_answers if t <= received]
            if before and warm <= before[-1] <= until:
                downstream.append(received - before[-1])
        down_per_up, ups = len(down_requests), len(up_answers)
        # retries: second request of a flaky due time minus the first
        attempts: dict[str, list[float]] = {}
        for request in b.requests("flaky"):
            attempts.setdefault(request.headers.get("idempotency-key", ""), []).append(request.received_at)
        gaps = [sorted(t)[1] - sorted(t)[0] for k, t in attempts.items() if len(t) >= 2 and warm <= (_due_of(k) or 0) <= until]
    print(f"\n== results, {design.name}")
    print(f"  answer -> materialization in Dagster:    {summary(delays, 's')}")
    print(f"  upstream answer -> downstream request:   {summary(downstream, 's')}  ({down_per_up} downstream requests for {ups} upstream answers)")
    print(f"  failed attempt -> retry (delay 5 s):     {summary(gaps, 's')}")
    return {"materialization": delays, "downstream": downstream, "retry": gaps}


def bench_lateness(design: Design, minutes: float) -> dict[str, list[float]]:
    tasks = ["tasks:"]
    for i in range(200):
        tasks.append(f"  - {{name: boundary_{i:03d}, owner: bench, agent: demo{i % 8}, prompt: 'b {i}', schedule: '* * * * *'}}")
    for i in range(800):
        second = 1 + i % 59
        tasks.append(f"  - {{name: spread_{i:03d}, owner: bench, agent: demo{i % 8}, prompt: 's {i}', schedule: '{second} * * * * *'}}")
    agents_yaml = _agent_lines([(f"demo{i}", "main") for i in range(8)], concurrency=64)
    with bench(design, agents_yaml, "\n".join(tasks) + "\n") as b:
        b.platform.start_daemon()
        warm = time.time() + 120
        until = warm + minutes * 60
        time.sleep(until - time.time() + 10)
        boundary, spread = [], []
        for request in b.requests():
            key = request.headers.get("idempotency-key", "")
            due = _due_of(key)
            if due is None or not warm <= due <= until:
                continue
            (boundary if ":boundary_" in key else spread).append((request.received_at - due) * 1000.0)
        # The dispatcher's own record: when each request left (the agent server, in this
        # process on the same 2 cores, takes a 200-request burst in over ~100-200 ms).
        sent_boundary, sent_spread = [], []
        for row in b.executions():
            due = _due_of(row.idempotency_key)
            if due is None or row.lateness_ms is None or not warm <= due <= until:
                continue
            (sent_boundary if ":boundary_" in row.idempotency_key else sent_spread).append(float(row.lateness_ms))
    print(f"\n== lateness at 1,000 tasks per minute, {design.name}: due time -> agent request")
    print(f"  at minute boundaries (200 at once): {summary(boundary)}")
    print(f"  spread over the minute (800):       {summary(spread)}")
    print(f"  all:                                {summary(boundary + spread)}")
    print(f"  sent (dispatcher's record), boundary: {summary(sent_boundary)}")
    print(f"  sent (dispatcher's record), spread:   {summary(sent_spread)}")
    return {"boundary": boundary, "all": boundary + spread, "sent_boundary": sent_boundary, "sent_all": sent_boundary + sent_spread}


def bench_events(design: Design, count: int) -> dict[str, list[float]]:
    agents_yaml = _agent_lines([("demo", "main")]) + "sources:\n  - {name: bench, auth: {kind: bearer, token_env: BENCH_HOOK_TOKEN}}\n"
    tasks = "tasks:\n  - {name: on_event, owner: bench, agent: demo, prompt: '{{ event.payload.n }}', events: [{source: bench}]}\n"
    with bench(design, agents_yaml, tasks) as b:
        ingress = b.platform.start_ingress()
        b.platform.start_daemon()
        time.sleep(90)  # a window run is standing by
        with httpx.Client(timeout=30) as client:
            for n in range(count):
                client.post(
                    f"{ingress}/events/bench",
                    json={"type": "ping", "n": n},
                    headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"n-{n}"},
                ).raise_for_status()
                time.sleep(0.2)
        wait_until(lambda: len([r for r in b.requests() if ":event:" in r.headers.get("idempotency-key", "")]) >= count, timeout_s=300)
        received = {e.event_id: e.received_at.timestamp() for e in b.platform.store().events_after(0, limit=100_000)}
        latency = [
            (r.received_at - received[r.headers["idempotency-key"].split(":event:", 1)[1]]) * 1000.0
            for r in b.requests()
            if ":event:" in r.headers.get("idempotency-key", "")
        ]
    print(f"\n== events, {design.name}: accepted -> agent request")
    print(f"  {summary(latency)}")
    return {"events": latency}


def bench_catchup(design: Design, outage_min: float, minutes: float) -> dict[str, list[float]]:
    tasks = ["tasks:"] + [
        f"  - {{name: pulse_{i:03d}, owner: bench, agent: demo{i % 4}, prompt: 'p {i}', schedule: {{every: 2s}}, "
        "misfire: {policy: all, grace: 10s, max_catchup: 10}}"
        for i in range(200)
    ]
    agents_yaml = _agent_lines([(f"demo{i}", "main") for i in range(4)], concurrency=64)
    with bench(design, agents_yaml, "\n".join(tasks) + "\n") as b:
        b.platform.start_daemon()
        time.sleep(120)
        b.platform.kill_daemon(with_its_runs=True)
        down_at = time.time()
        time.sleep(outage_min * 60)
        b.platform.start_daemon()
        restarted = time.time()
        live_from = restarted + 75  # from the first window planned a full lead ahead
        until = live_from + minutes * 60
        time.sleep(until - time.time() + 10)
        live, caught = [], 0
        for request in b.requests():
            key = request.headers.get("idempotency-key", "")
            due = _due_of(key)
            if due is None:
                continue
            if down_at + 10 < due < restarted:
                caught += 1
            elif live_from <= due <= until:
                live.append((request.received_at - due) * 1000.0)
        with dg.DagsterInstance.from_config(str(b.platform.home)) as instance:
            catchup_runs = len(instance.get_runs(dg.RunsFilter(tags={"agent_pipelines/catchup": "true"})))
    print(f"\n== catch-up after a {outage_min:g}-minute outage, {design.name}")
    print(f"  due times of the outage caught up: {caught} in {catchup_runs} catch-up run(s)")
    print(f"  live due times after the restart (from restart + 75 s, {minutes:g} min): {summary(live)}")
    return {"live": live}


def compare(section: str, results: dict[str, dict[str, list[float]]]) -> None:
    if len(results) != 2:
        return
    (old_name, old), (new_name, new) = results.items()
    print(f"\n== {section}: ratio previous / v2 (higher is better for v2)")
    for metric in new:
        print(f"  {metric:16s} p50 {ratio(old.get(metric, []), new[metric], 50)}  p99 {ratio(old.get(metric, []), new[metric], 99)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["results", "lateness", "events", "catchup", "all"])
    parser.add_argument("--designs", choices=["both", "current", "previous"], default="both")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--outage", type=float, default=10.0, help="minutes the daemon stays down (catchup)")
    args = parser.parse_args()
    sections: dict[str, Callable[[Design], dict[str, list[float]]]] = {
        "results": lambda d: bench_results(d, args.minutes),
        "lateness": lambda d: bench_lateness(d, args.minutes),
        "events": lambda d: bench_events(d, args.events),
        "catchup": lambda d: bench_catchup(d, args.outage, args.minutes),
    }
    chosen = list(sections) if args.section == "all" else [args.section]
    with designs(args.designs) as found:
        for section in chosen:
            compare(section, {design.name: sections[section](design) for design in found})


if __name__ == "__main__":
    main()

