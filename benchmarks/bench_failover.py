"""Daemon failover: takeover time and lateness while the active daemon is killed, again and again.

    .venv/bin/python benchmarks/bench_failover.py --tasks 200 --kills 10

`--tasks` tasks `every: 2s` (misfire policy `all`) on PostgreSQL (a fresh database on
$AGENT_PIPELINES_TEST_POSTGRES_URL's server, as bench_triggers.py), a long-lived code server and a recording demo agent.

- failover: two `agent-pipelines daemon` wrappers; each kill SIGKILLs the active wrapper (every
  other one 80 ms before a due instant, the rest at a random moment), then restarts it as the new
  standby.
- baseline, same run: one plain `dagster-daemon`, SIGKILLed the same way and restarted 1 s later
  (what a supervisor such as `up` does; plain `dagster dev` does not restart it at all).

Printed for each: kill -> a daemon active again (new leadership term / process started) and
kill -> that daemon's first sensor heartbeat in Dagster; lateness at the agent of due times
within 10 s after a kill against the others; due times delivered once / twice / never.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import TOKEN, ratio, summary  # noqa: E402
from bench_triggers import postgres_database  # noqa: E402

from agent_pipelines.chaos import account, rows_of, sleep_until_aligned  # noqa: E402
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread  # noqa: E402
from agent_pipelines.failover import DAEMON_ROLE  # noqa: E402
from agent_pipelines.instance import POSTGRES_URL_ENV, instance_yaml  # noqa: E402
from agent_pipelines.local_platform import Platform, children_of, wait_until  # noqa: E402

STEP_S = 2.0


@contextmanager
def platform(tasks: list[str]) -> Iterator[Platform]:
    with tempfile.TemporaryDirectory(prefix="ap-failover-") as tmp, postgres_database() as url:
        tmp_path = Path(tmp)
        os.environ.update({POSTGRES_URL_ENV: url, "DEMO_AGENT_TOKEN": TOKEN})
        with run_in_thread(DemoAgentConfig(latency_ms=50, token=TOKEN, log_limit=2_000_000)) as agent:
            home = tmp_path / "home"
            home.mkdir()
            (home / "dagster.yaml").write_text(instance_yaml(use_postgres=True))
            catalog = tmp_path / "catalog"
            catalog.mkdir()
            (catalog / "agents.yaml").write_text(
                f"agents:\n  - {{name: demo, kind: openai_chat, base_url: {agent.url}, auth_env: DEMO_AGENT_TOKEN, "
                "model: demo-model, max_concurrency: 256, timeout: 30s}\n"
            )
            (catalog / "tasks.yaml").write_text(
                "tasks:\n"
                + "".join(
                    f"  - {{name: {name}, owner: bench, agent: demo, prompt: 'p {{{{ due_time }}}}', schedule: {{every: 2s}}, "
                    "misfire: {policy: all, grace: 10m, max_catchup: 1000}}\n"
                    for name in tasks
                )
            )
            p = Platform(home, catalog, agent, tmp_path)
            try:
                p.start_code_server()
                yield p
            finally:
                p.stop()


def _sensor_beat_after(p: Platform, moment: float) -> bool:
    with dg.DagsterInstance.from_config(str(p.home)) as instance:
        beat = instance.get_daemon_heartbeats().get("SENSOR")
    return beat is not None and beat.timestamp > moment


def _kill_moment(i: int, rng: random.Random) -> str:
    if i % 2 == 0:
        sleep_until_aligned(STEP_S, before_s=0.08)
        return "aligned"
    time.sleep(rng.uniform(0, STEP_S))
    return "random"


def run(mode: str, tasks: list[str], kills: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    with platform(tasks) as p:
        store = p.store()
        if mode == "failover":
            p.start_wrapper("a")
            wait_until(lambda: bool(store.leadership_terms(DAEMON_ROLE)), timeout_s=120)
            p.start_wrapper("b")
        else:
            p.start_daemon()
        wait_until(lambda: len(p.agent.requests()) >= 4 * len(tasks), timeout_s=300, message="steady firing")
        time.sleep(10)
        start = time.time()
        active_again: list[float] = []
        beating_again: list[float] = []
        kill_times: list[float] = []
        for i in range(kills):
            if mode == "failover":
                term = store.leadership_terms(DAEMON_ROLE, limit=1)[0]
                victim = term.holder.rsplit("(", 1)[1].rstrip(")")
                moment = _kill_moment(i, rng)
                killed_at = time.time()
                p.wrappers[victim].send_signal(signal.SIGKILL)
                p.wrappers[victim].wait(10)
                wait_until(lambda: store.leadership_terms(DAEMON_ROLE, limit=1)[0].term > term.term, timeout_s=120, interval_s=0.05)
                leader = store.leadership_terms(DAEMON_ROLE, limit=1)[0].holder.rsplit("(", 1)[1].rstrip(")")
                wait_until(lambda: bool(children_of(p.wrappers[leader].pid)), timeout_s=60, interval_s=0.05)
                active_again.append(time.time() - killed_at)
                p.restart_wrapper(victim)
            else:
                moment = _kill_moment(i, rng)
                killed_at = time.time()
                p.kill_daemon(with_its_runs=False)
                time.sleep(1.0)
                p.start_daemon()
                active_again.append(time.time() - killed_at)
            kill_times.append(killed_at)
            wait_until(lambda: _sensor_beat_after(p, killed_at), timeout_s=180, interval_s=0.1)
            beating_again.append(time.time() - killed_at)
            print(f"  {mode} kill {i + 1} ({moment}): active again after {active_again[-1]:.2f} s, sensor beating after {beating_again[-1]:.1f} s", flush=True)
            time.sleep(rng.uniform(6, 10))
        end = time.time()
        wait_until(lambda: time.time() > end + 30, timeout_s=60)
        result = account(rows_of(store, tasks), p.agent.requests(), tasks, start, end, STEP_S)
    near, far = [], []
    for item in result.once + result.twice:
        late_ms = (item.deliveries[0] - item.due.timestamp()) * 1000
        (near if any(k <= item.due.timestamp() <= k + 10 for k in kill_times) else far).append(late_ms)
    print(f"\n== {mode}: {len(tasks)} tasks every 2 s, {kills} kills")
    print(f"  kill -> daemon active again:   {summary(active_again, 's')}")
    print(f"  kill -> its sensor heartbeat:  {summary(beating_again, 's')}")
    print(f"  lateness, due within 10 s after a kill: {summary(near)}")
    print(f"  lateness, the other due times:          {summary(far)}")
    print(f"  {result.summary()}; never: {result.never_by_state()}")
    return {"active": active_again, "beating": beating_again, "near": near, "far": far, "twice": [float(len(result.twice))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--modes", default="baseline,failover")
    args = parser.parse_args()
    tasks = [f"t{i:03d}" for i in range(args.tasks)]
    results = {mode: run(mode, tasks, args.kills, args.seed) for mode in args.modes.split(",")}
    if {"baseline", "failover"} <= results.keys():
        old, new = results["baseline"], results["failover"]
        print("\n== baseline (one daemon, restarted 1 s after it dies) / failover")
        print(f"  daemon active again p50 {ratio(old['active'], new['active'], 50)}, sensor beating p50 {ratio(old['beating'], new['beating'], 50)}")
        print(f"  lateness near a kill p99 {ratio(old['near'], new['near'], 99)}")


if __name__ == "__main__":
    main()
