"""Chaos: N kills at aligned and random moments, and what each design delivered.

    .venv/bin/python benchmarks/bench_chaos.py --kills 12

20 tasks `every: 2s` (misfire policy `all`, grace 10 min) against a recording demo agent. The
kills cycle through the run workers alone (what the OOM killer does: Dagster marks the runs
failed at once), the daemon alone (5 s down) and everything (daemon, code server and runs, 5 s
down); every other kill lands 80 ms before a due instant, the rest at a random moment. Then
each due time of the span is counted as delivered once, twice or never (with the state of its
execution row), and for due times that fell inside an outage, the delay from recovery to
delivery. The previous core (525c137) runs the same script first, as the baseline.

Target: 0 twice, 0 unexplained (never delivered and not `missed` with a reason), catch-up within
seconds of recovery.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import Design, _agent_lines, bench, designs, summary  # noqa: E402

from agent_pipelines.chaos import account, due_times, schedule_key, sleep_until_aligned  # noqa: E402
from agent_pipelines.local_platform import RUN_WORKER_MARK, processes_of, wait_until  # noqa: E402

STEP_S = 2.0
TASKS = [f"pulse_{i:02d}" for i in range(20)]
KINDS = ("workers", "daemon", "all")
UNSETTLED = ("claimed", "running", "sending", "retrying", "catchup", "not_sent")


def rows(home: Path) -> dict[str, tuple[str, str | None]]:
    """Key -> (status, reason); the previous core had no `reason` column, its `error` stands in."""
    engine = sa.create_engine(f"sqlite:///{home / 'agent_pipelines.db'}")
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("agent_pipelines_executions")}
        why = "reason" if "reason" in columns else "error"
        with engine.connect() as conn:
            found = conn.execute(sa.text(f"SELECT idempotency_key, status, {why} FROM agent_pipelines_executions")).all()
    finally:
        engine.dispose()
    return {key: (state, reason) for key, state, reason in found}


def bench_chaos(design: Design, kills: int, seed: int) -> dict[str, list[float]]:
    tasks = "tasks:\n" + "".join(
        f"  - {{name: {name}, owner: bench, agent: demo, prompt: 'p {{{{ due_time }}}}', schedule: {{every: 2s}}, "
        "misfire: {policy: all, grace: 10m, max_catchup: 1000}}\n"
        for name in TASKS
    )
    rng = random.Random(seed)
    outages: list[tuple[str, str, float, float]] = []  # kind, moment, killed at, recovered at
    with bench(design, _agent_lines([("demo", "main")]), tasks) as b:
        p = b.platform
        p.start_daemon()
        time.sleep(90)
        start = time.time() + STEP_S
        for number in range(kills):
            kind = KINDS[number % len(KINDS)]
            moment = "aligned" if number % 2 == 0 else "random"
            if kind == "workers":
                wait_until(lambda: bool(processes_of(p.home, RUN_WORKER_MARK)), timeout_s=120, interval_s=0.1)
            if moment == "aligned":
                sleep_until_aligned(STEP_S, before_s=0.08)
            else:
                time.sleep(rng.uniform(0, STEP_S))
            killed_at = time.time()
            if kind == "workers":
                before = set(processes_of(p.home, RUN_WORKER_MARK))
                p.kill_run_workers()
                wait_until(lambda: bool(set(processes_of(p.home, RUN_WORKER_MARK)) - before), timeout_s=120, interval_s=0.1)
            else:
                p.kill_daemon(with_its_runs=kind == "all")
                time.sleep(5)
                p.start_daemon()
            outages.append((kind, moment, killed_at, time.time()))
            time.sleep(10)
        end = time.time()
        settled_by = time.time() + 300

        def unsettled() -> int:
            found = rows(p.home)
            return sum(
                1
                for task in TASKS
                for due in due_times(start, end, STEP_S)
                if found.get(schedule_key(task, due), ("absent", None))[0] in (*UNSETTLED, "absent")
            )

        while time.time() < settled_by and unsettled():
            time.sleep(2)
        result = account(rows(p.home), b.requests(), TASKS, start, end, STEP_S)
    catchup: list[float] = []
    for item in result.once + result.twice:
        for _kind, _moment, killed_at, recovered_at in outages:
            if killed_at - STEP_S <= item.due.timestamp() <= recovered_at:
                catchup.append(max(0.0, item.deliveries[0] - recovered_at))
    print(f"\n== chaos, {design.name}: {kills} kills ({', '.join(f'{k}/{m}' for k, m, _, _ in outages)})")
    print(f"  due times {start:.0f}..{end:.0f}: {result.summary()}")
    for state, count in sorted(result.never_by_state().items(), key=lambda kv: -kv[1]):
        print(f"    never delivered, {count:4d} x {state[:150]}")
    print(f"  recovery -> delivery of due times inside an outage: {summary(catchup, 's')}")
    return {
        "twice": [float(len(result.twice))],
        "never": [float(len(result.never))],
        "unexplained": [float(len(result.unexplained))],
        "catchup": catchup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--designs", choices=["both", "current", "previous"], default="both")
    args = parser.parse_args()
    with designs(args.designs) as found:
        results = {design.name: bench_chaos(design, args.kills, args.seed) for design in found}
    if len(results) == 2:
        (old_name, old), (new_name, new) = results.items()
        print(f"\n== chaos: {old_name} -> {new_name}")
        for metric in ("twice", "never", "unexplained"):
            print(f"  {metric:12s} {old[metric][0]:6.0f} -> {new[metric][0]:6.0f}")


if __name__ == "__main__":
    main()
