"""Trigger benchmarks with a real dagster-daemon, printed as figures and ratios against plain
Dagster measured in the same run (see RESULTS.md for the numbers and the command).

    .venv/bin/python benchmarks/bench_triggers.py all --storage both

Sections (each starts its own DAGSTER_HOME, daemon, demo agent and, for events, ingress):
  latency  due time -> agent request, for interval and cron tasks vs a plain Dagster schedule
  burst    1,000 tasks due in the same minute vs N plain schedules due in that minute
  events   event accepted -> agent request vs a plain sensor that launches a run per event
  scale    10,000-task catalog: code-location load time and idle daemon CPU vs 1,000 schedules
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread  # noqa: E402
from agent_pipelines.instance import POSTGRES_URL_ENV, instance_yaml  # noqa: E402
from agent_pipelines.local_platform import Platform, wait_until  # noqa: E402
from agent_pipelines.store import sqlalchemy_url  # noqa: E402
from agent_pipelines.scheduling.timing import parse_due  # noqa: E402

TOKEN = "bench-token"
POSTGRES_ADMIN = os.environ.get("AGENT_PIPELINES_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------


@contextmanager
def postgres_database():
    name = f"ap_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(sqlalchemy_url(POSTGRES_ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def platform(storage: str, agents_yaml: str, tasks_yaml: str, baseline_env: dict[str, str], latency_ms: float = 50):
    with tempfile.TemporaryDirectory(prefix="ap-bench-") as tmp, run_in_thread(
        DemoAgentConfig(latency_ms=latency_ms, token=TOKEN, log_limit=1_000_000)
    ) as agent:
        tmp_path = Path(tmp)
        home = tmp_path / "home"
        home.mkdir()
        catalog = tmp_path / "catalog"
        catalog.mkdir()
        (catalog / "agents.yaml").write_text(agents_yaml.replace("AGENT_URL", agent.url))
        (catalog / "tasks.yaml").write_text(tasks_yaml)
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(
            textwrap.dedent(
                f"""\
                load_from:
                  - python_module: {{module_name: agent_pipelines.definitions, working_directory: {ROOT}}}
                  - python_file: {{relative_path: {ROOT / 'benchmarks' / 'baseline_location.py'}, working_directory: {ROOT}}}
                """
            )
        )
        os.environ.update({"DEMO_AGENT_TOKEN": TOKEN, "BENCH_HOOK_TOKEN": TOKEN, "BASELINE_AGENT_URL": agent.url, **baseline_env})
        with postgres_database() if storage == "postgres" else _nothing() as pg_url:
            if pg_url:
                os.environ[POSTGRES_URL_ENV] = pg_url
            else:
                os.environ.pop(POSTGRES_URL_ENV, None)
            (home / "dagster.yaml").write_text(instance_yaml(use_postgres=storage == "postgres"))
            p = Platform(home, catalog, agent, tmp_path, workspace=workspace)
            try:
                yield p
            finally:
                p.stop()


@contextmanager
def _nothing():
    yield None


def agents(count: int = 1, concurrency: int = 16) -> str:
    lines = ["agents:"]
    for i in range(count):
        lines.append(
            f"  - {{name: demo{i}, kind: openai_chat, base_url: AGENT_URL, auth_env: DEMO_AGENT_TOKEN, "
            f"model: demo-model, max_concurrency: {concurrency}}}"
        )
    return "\n".join(lines) + "\n"


WORST: list[tuple[float, str]] = []


def lateness_by_kind(platform: Platform, since: float, until: float, classify: Callable[[str], str | None]) -> dict[str, list[float]]:
    """ms between each request's due time (from its idempotency key) and its arrival."""
    found: dict[str, list[float]] = {}
    WORST.clear()
    for request in platform.agent.requests():
        key = request.headers.get("idempotency-key", "")
        kind = classify(key)
        if kind is None:
            continue
        due = parse_due(key.rsplit(":", 3)[-3] + ":" + key.rsplit(":", 3)[-2] + ":" + key.rsplit(":", 3)[-1]).timestamp()
        if since <= due <= until:
            found.setdefault(kind, []).append((request.received_at - due) * 1000.0)
            WORST.append(((request.received_at - due) * 1000.0, key))
    WORST.sort(reverse=True)
    return found


def recorded_lateness(platform: Platform, since: float, until: float, classify: Callable[[str], str | None]) -> dict[str, list[float]]:
    """The lateness the platform itself records per execution (request sent minus due time)."""
    engine = platform.store().engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT idempotency_key, due_time, lateness_ms FROM agent_pipelines_executions WHERE lateness_ms IS NOT NULL")
        ).all()
    found: dict[str, list[float]] = {}
    for key, due, lateness in rows:
        kind = classify(key)
        due_ts = parse_due(key.split(":schedule:")[1]).timestamp() if ":schedule:" in key else None
        if kind and due_ts is not None and since <= due_ts <= until:
            found.setdefault(kind, []).append(float(lateness))
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"n={len(values):5d}  p50={pct(values, 50):9.1f} ms  p95={pct(values, 95):9.1f} ms  "
        f"p99={pct(values, 99):9.1f} ms  max={max(values):9.1f} ms"
    )


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def bench_latency(storage: str, minutes: float) -> None:
    tasks = ["tasks:"]
    for i in range(10):
        tasks.append(f"  - {{name: every2_{i}, owner: bench, agent: demo0, prompt: p, schedule: {{every: 2s}}}}")
        tasks.append(f"  - {{name: every5_{i}, owner: bench, agent: demo0, prompt: p, schedule: {{every: 5s}}}}")
        tasks.append(f"  - {{name: cron6_{i}, owner: bench, agent: demo0, prompt: p, schedule: '*/10 * * * * *'}}")
        tasks.append(f"  - {{name: cron5_{i}, owner: bench, agent: demo0, prompt: p, schedule: '* * * * *'}}")
    with platform(storage, agents(concurrency=64), "\n".join(tasks) + "\n", {}) as p:
        p.start_daemon()
        start = time.time()
        warm = start + 75  # the first windows were planned less than LEAD ahead
        until = warm + minutes * 60
        time.sleep(until - time.time() + 10)

        def classify(key: str) -> str | None:
            if key.startswith("baseline:schedule:"):
                return "plain Dagster schedule (* * * * *)"
            if ":every" in key:
                return "interval (every 2s / 5s)"
            if ":cron6_" in key:
                return "cron, 6 fields (*/10 s)"
            if ":cron5_" in key:
                return "cron, 5 fields (* * * * *)"
            return None

        found = lateness_by_kind(p, warm, until, classify)
        recorded = recorded_lateness(p, warm, until, classify)
    ours = [v for k, vs in found.items() if not k.startswith("plain") for v in vs]
    base = found.get("plain Dagster schedule (* * * * *)", [])
    print(f"\n== latency, {storage}: due time -> agent request received, {minutes:g} min after warm-up")
    for kind in sorted(found):
        print(f"  {kind:38s} {summary(found[kind])}")
    print("  as recorded by the dispatcher when the request left (executions.lateness_ms):")
    for kind in sorted(recorded):
        print(f"  {kind:38s} {summary(recorded[kind])}")
    print("  slowest: " + ", ".join(f"{ms:.0f} ms {key.rsplit(':', 3)[-3][-2:]}:{key.rsplit(':', 3)[-2]}:{key.rsplit(':', 3)[-1]}" for ms, key in WORST[:6]))
    if ours and base:
        print(f"  ratio plain/agent_pipelines: p50 {pct(base, 50) / max(pct(ours, 50), 0.001):.0f}x, "
              f"p99 {pct(base, 99) / max(pct(ours, 99), 0.001):.0f}x")


def _next_minute_cron(after_s: float) -> tuple[str, float]:
    due = dt.datetime.fromtimestamp(time.time() + after_s, dt.timezone.utc).replace(second=0, microsecond=0)
    due += dt.timedelta(minutes=1)
    return f"{due.minute} {due.hour} * * *", due.timestamp()


def bench_burst(storage: str, count: int, baseline_count: int) -> None:
    cron, due = _next_minute_cron(150)  # leaves time to load the catalog and plan the window
    tasks = ["tasks:"] + [
        f"  - {{name: burst_{i:04d}, owner: bench, agent: demo{i % 8}, prompt: 'task {i}', schedule: '{cron}'}}"
        for i in range(count)
    ]
    env = {"BASELINE_BURST_COUNT": str(baseline_count), "BASELINE_BURST_CRON": cron}
    with platform(storage, agents(8, concurrency=16), "\n".join(tasks) + "\n", env) as p:
        p.start_daemon()
        wait_until(lambda: time.time() > due + 5, timeout_s=400)
        wait_until(
            lambda: len([r for r in p.agent.requests() if ":burst_" in r.headers.get("idempotency-key", "")]) >= count,
            timeout_s=300,
            message=f"{count} burst requests",
        )
        time.sleep(5)
        wait_until(
            lambda: len([r for r in p.agent.requests() if r.headers.get("idempotency-key", "").startswith("baseline:burst")]) >= baseline_count,
            timeout_s=900,
            message=f"{baseline_count} baseline runs",
        )
        ours = sorted(r.received_at - due for r in p.agent.requests() if ":burst_" in r.headers.get("idempotency-key", ""))
        base = sorted(r.received_at - due for r in p.agent.requests() if r.headers.get("idempotency-key", "").startswith("baseline:burst"))
    print(f"\n== burst, {storage}: {count} tasks due at the same minute (8 agents x 16 concurrent, 50 ms answers)")
    print(f"  agent_pipelines: {len(ours)} requests, first {ours[0] * 1000:.0f} ms, median {statistics.median(ours):.2f} s, last {ours[-1]:.2f} s after the due time")
    rate = (base[-1] - base[0]) / max(1, len(base) - 1)
    extrapolated = base[0] + rate * (count - 1)
    print(f"  plain schedules: {len(base)} runs, first {base[0]:.2f} s, last {base[-1]:.2f} s; "
          f"{rate:.2f} s per run -> {count} would end ~{extrapolated:.0f} s after the due time")
    print(f"  ratio plain/agent_pipelines (time to the last of {count}): {extrapolated / max(ours[-1], 0.001):.0f}x")


def bench_events(storage: str, count: int, baseline_count: int) -> None:
    agents_yaml = agents() + "sources:\n  - {name: bench, auth: {kind: bearer, token_env: BENCH_HOOK_TOKEN}}\n  - {name: baseline, auth: {kind: bearer, token_env: BENCH_HOOK_TOKEN}}\n"
    tasks = "tasks:\n  - {name: on_event, owner: bench, agent: demo0, prompt: '{{ event.payload.n }}', events: [{source: bench}]}\n"
    with platform(storage, agents_yaml, tasks, {"BASELINE_EVENTS": "1"}) as p:
        ingress = p.start_ingress()
        p.start_daemon()
        time.sleep(90)  # a window run is standing by

        def post(source: str, n: int) -> None:
            httpx.post(
                f"{ingress}/events/{source}",
                json={"type": "ping", "n": n},
                headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"{source}-{n}"},
                timeout=30,
            ).raise_for_status()

        def post_many(source: str, total: int, per_second: float) -> None:
            for n in range(total):
                post(source, n)
                time.sleep(1 / per_second)

        threads = [
            threading.Thread(target=post_many, args=("bench", count, 5.0)),
            threading.Thread(target=post_many, args=("baseline", baseline_count, 0.5)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(
            lambda: len([r for r in p.agent.requests() if r.headers.get("idempotency-key", "").startswith("baseline:event")]) >= baseline_count
            and len([r for r in p.agent.requests() if ":event:bench:" in r.headers.get("idempotency-key", "")]) >= count,
            timeout_s=900,
            message="all events delivered",
        )
        received = {e.event_id: e.received_at.timestamp() for e in p.store().events_after(0, limit=10_000)}
        ours, base = [], []
        for request in p.agent.requests():
            key = request.headers.get("idempotency-key", "")
            if ":event:bench:" in key:
                ours.append((request.received_at - received[key.split(":event:", 1)[1]]) * 1000)
            elif key.startswith("baseline:event:"):
                base.append((request.received_at - received[key.split("baseline:event:", 1)[1]]) * 1000)
    print(f"\n== events, {storage}: accepted (stored by the ingress) -> agent request received")
    print(f"  agent_pipelines (window run picks up):  {summary(ours)}")
    print(f"  plain sensor, one run per event:       {summary(base)}")
    print(f"  ratio plain/agent_pipelines: p50 {pct(base, 50) / pct(ours, 50):.0f}x, p99 {pct(base, 99) / pct(ours, 99):.0f}x")


SCALE_LOAD = """
import sys, time
t0 = time.perf_counter()
{build}
t1 = time.perf_counter()
from dagster._core.remote_representation.external_data import RepositorySnap
snap = RepositorySnap.from_def(defs.get_repository_def())
t2 = time.perf_counter()
print(f"{{t2 - t0:.2f}} {{t1 - t0:.2f}} {{t2 - t1:.2f}}")
"""

PLAIN_BUILD = """
import dagster as dg
N = int(sys.argv[1])
assets, jobs, schedules = [], [], []
for i in range(N):
    @dg.asset(name=f"task_{i}", code_version="v1")
    def _a() -> None: ...
    job = dg.define_asset_job(f"task_{i}_job", selection=[f"task_{i}"])
    assets.append(_a); jobs.append(job)
    schedules.append(dg.ScheduleDefinition(name=f"task_{i}_schedule", cron_schedule=f"{i % 60} {i % 24} * * *", job=job,
                                          default_status=dg.DefaultScheduleStatus.RUNNING))
defs = dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)
"""


def scale_catalog(count: int) -> str:
    tasks = ["tasks:"]
    for i in range(count - 10):
        tasks.append(f"  - {{name: t{i:05d}, owner: team{i % 40}, agent: demo{i % 8}, prompt: 'report {i}', schedule: '{(i * 7) % 60} {(i * 11) % 24} * * *'}}")
    for i in range(10):
        tasks.append(f"  - {{name: fast{i}, owner: bench, agent: demo0, prompt: p, schedule: {{every: 5s}}}}")
    return "\n".join(tasks) + "\n"


def _load_seconds(build: str, args: Iterable[str], env: dict[str, str]) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCALE_LOAD.format(build=build), *args],
        capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


class CpuSampler:
    """CPU seconds of the daemon and the code server, and separately of the run workers.

    Sampled per pid, so that processes that come and go are counted. Run workers (children of
    the gRPC code server process) do the scheduled work; they are reported apart from the idle
    cost of the platform itself.
    """

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.worker: dict[int, bool] = {}

    def _tree(self) -> dict[int, tuple[int, bool]]:
        table = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            table[int(proc.name)] = (int(stat[1]), int(stat[11]) + int(stat[12]), b"api\x00grpc" in cmdline)
        members: dict[int, bool] = {pid: False for pid in self.roots}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, _) in table.items():
                if ppid in members and pid not in members:
                    parent_is_server = table.get(ppid, (0, 0, False))[2]
                    members[pid] = members[ppid] or parent_is_server
                    grew = True
        return {pid: (table[pid][1], is_worker) for pid, is_worker in members.items() if pid in table}

    def sample_for(self, seconds: float) -> tuple[float, float]:
        """(cores used by the daemon and code server, cores used by run workers)."""
        end = time.time() + seconds
        while time.time() < end:
            for pid, (ticks, is_worker) in self._tree().items():
                self.first.setdefault(pid, ticks)
                self.last[pid] = ticks
                self.worker[pid] = is_worker
            time.sleep(0.25)
        tick = os.sysconf("SC_CLK_TCK") * seconds
        platform = sum(self.last[p] - self.first[p] for p in self.last if not self.worker[p]) / tick
        workers = sum(self.last[p] - self.first[p] for p in self.last if self.worker[p]) / tick
        return platform, workers


@contextmanager
def code_server(module_or_file: list[str], env: dict[str, str], port: int):
    """A persistent gRPC code server, as in production (the daemon does not restart it)."""
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "code-server", "start", *module_or_file, "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        import socket

        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield proc
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _idle_cpu(p: Platform, server: subprocess.Popen, seconds: float) -> tuple[float, float]:
    assert p.daemon is not None
    return CpuSampler([p.daemon.pid, server.pid]).sample_for(seconds)


def bench_scale(storage: str, count: int, baseline_count: int, idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp)
        (catalog / "agents.yaml").write_text(agents(8).replace("AGENT_URL", "http://127.0.0.1:9"))
        (catalog / "tasks.yaml").write_text(scale_catalog(count))
        ours = _load_seconds(
            "from agent_pipelines.catalog.loader import load_catalog\nfrom agent_pipelines.composition import build_definitions\n"
            "defs = build_definitions(load_catalog())", [], {"AGENT_PIPELINES_CATALOG": str(catalog)}
        )
    plain = _load_seconds(PLAIN_BUILD, [str(baseline_count)], {})
    print("\n== scale: code location load (import + build + snapshot), fresh process")
    print(f"  agent_pipelines, {count} tasks: {ours[0]:.1f} s (build {ours[1]:.1f} s, snapshot {ours[2]:.1f} s)")
    print(f"  plain Dagster, {baseline_count} assets+jobs+schedules: {plain[0]:.1f} s "
          f"-> {count} would take ~{plain[0] * count / baseline_count:.0f} s")
    print(f"  per task: plain {plain[0] / baseline_count * 1000:.2f} ms vs agent_pipelines {ours[0] / count * 1000:.2f} ms "
          f"({plain[0] / baseline_count / (ours[0] / count):.0f}x)")

    with platform(storage, agents(8), scale_catalog(count), {}) as p:
        env = {"DAGSTER_HOME": str(p.home), "AGENT_PIPELINES_CATALOG": str(p.catalog_path)}
        with code_server(["-m", "agent_pipelines.definitions"], env, 14001) as server:
            p.workspace.write_text("load_from:\n  - grpc_server: {host: 127.0.0.1, port: 14001, location_name: agent_pipelines}\n")
            p.start_daemon()
            time.sleep(90)
            cpu, workers = _idle_cpu(p, server, idle_s)
            now = time.time()
            fast = lateness_by_kind(p, now - idle_s, now - 5, lambda k: "fast" if ":fast" in k else None).get("fast", [])
    print(f"  idle daemon + code server ({count} tasks, 10 of them every 5 s), {storage}: {cpu:.3f} cores over {idle_s:.0f} s")
    print(f"  (the window runs firing the 10 every-5-s tasks used another {workers:.3f} cores)")
    print(f"  due times meanwhile (every 5 s tasks): {summary(fast)}")
    with tempfile.TemporaryDirectory() as tmp:
        plain_file = Path(tmp) / "plain_location.py"
        plain_file.write_text("import sys\nsys.argv = ['x', '%d']\n" % baseline_count + PLAIN_BUILD)
        with platform(storage, agents(), "tasks: []\n", {}) as p:
            with code_server(["-f", str(plain_file)], {"DAGSTER_HOME": str(p.home)}, 14002) as server:
                p.workspace.write_text("load_from:\n  - grpc_server: {host: 127.0.0.1, port: 14002, location_name: plain}\n")
                p.start_daemon()
                time.sleep(90)
                plain_cpu, _ = _idle_cpu(p, server, idle_s)
    print(f"  idle daemon + code server, plain Dagster with {baseline_count} schedules, {storage}: {plain_cpu:.3f} cores "
          f"(x{count // baseline_count} for {count} tasks ~{plain_cpu * count / baseline_count:.2f} cores: "
          f"{plain_cpu * count / baseline_count / max(cpu, 0.001):.0f}x agent_pipelines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["latency", "burst", "events", "scale", "all"])
    parser.add_argument("--storage", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    storages = ["sqlite", "postgres"] if args.storage == "both" else [args.storage]
    for storage in storages:
        if args.section in ("latency", "all"):
            bench_latency(storage, args.minutes)
        if args.section in ("burst", "all"):
            bench_burst(storage, 1000, 30)
        if args.section in ("events", "all"):
            bench_events(storage, 100, 30)
        if args.section in ("scale", "all"):
            bench_scale(storage, 10_000, 1_000, 60)


if __name__ == "__main__":
    main()
