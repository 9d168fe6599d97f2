"""Agents that sleep between tasks, at fleet scale: a day of 1,000 agents on a virtual clock.

    .venv/bin/python benchmarks/bench_lifecycle.py --agents 1000 --hours 24

A realistic catalog (tasks generated as YAML and loaded by the real catalog loader): 70% of the
agents carry 1-3 daily tasks, 25% an hourly one, 5% one every minute. Each agent has a
`lifecycle:` (lead 2 m, idle_after 10 m, min_up 5 m) and takes 20-90 s from its wake to ready
(a pod or sandbox starting); each execution keeps its agent busy for 5-60 s.

The simulation calls the real rules (`agent_pipelines.lifecycle.decisions.decide`) with the
real planner's due times (`next_due`, i.e. `scheduling.timing.due_times`), on the sensor's 5 s
grid, at every moment an agent's state could change; a due time that finds its agent not ready
is a cold start. The baseline in the same run is every agent always on.

Printed: agent-hours with the lifecycle and always on (target: >= 90% fewer for this
daily-heavy mix), cold starts (target 0), wake calls per hour.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_pipelines.catalog.loader import load_catalog  # noqa: E402
from agent_pipelines.lifecycle.decisions import AgentView, decide, horizon, next_due  # noqa: E402
from agent_pipelines.scheduling.timing import due_times, parse_due  # noqa: E402

TICK_S = 5.0  # the sensor's interval
START = parse_due("2026-12-01T00:00:00Z")


def catalog_yaml(agents: int, rng: random.Random) -> str:
    lines = ["agents:"]
    tasks = ["tasks:"]
    for i in range(agents):
        name = f"agent_{i:04d}"
        lines.append(
            f"  - {{name: {name}, kind: openai_chat, model: m, base_url: 'http://127.0.0.1:9', "
            "lifecycle: {kubernetes: {name: " + name.replace("_", "-") + "}, lead: 2m, idle_after: 10m, min_up: 5m}}"
        )
        kind = rng.random()
        if kind < 0.70:
            for j in range(rng.randint(1, 3)):
                tasks.append(f"  - {{name: {name}_daily_{j}, owner: x, agent: {name}, prompt: p, schedule: '{rng.randint(0, 59)} {rng.randint(0, 23)} * * *'}}")
        elif kind < 0.95:
            tasks.append(f"  - {{name: {name}_hourly, owner: x, agent: {name}, prompt: p, schedule: '{rng.randint(0, 59)} * * * *'}}")
        else:
            tasks.append(f"  - {{name: {name}_minutely, owner: x, agent: {name}, prompt: p, schedule: '* * * * *'}}")
    return "\n".join(lines + tasks) + "\n"


def on_grid(moment: dt.datetime) -> dt.datetime:
    """The first sensor tick at or after `moment`."""
    seconds = (moment - START).total_seconds()
    return START + dt.timedelta(seconds=-(-seconds // TICK_S) * TICK_S)


def simulate(agents: int, hours: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "catalog.yaml").write_text(catalog_yaml(agents, rng))
        catalog = load_catalog(Path(tmp))
    assert catalog.ok, catalog.problems[:3]
    end = START + dt.timedelta(hours=hours)
    tasks_of: dict[str, list] = {name: [] for name in catalog.agents}
    for task in catalog.regular_tasks.values():
        tasks_of[task.agent].append(task)
    wake_delay = {name: dt.timedelta(seconds=rng.uniform(20, 90)) for name in catalog.agents}

    up_seconds = 0.0
    cold = wakes = executions = 0
    started = time.perf_counter()
    for name, agent in catalog.agents.items():
        spec = agent.lifecycle
        assert spec is not None
        # The agent's work: every due time, busy for 5-60 s.
        dues = sorted(d for task in tasks_of[name] for d in due_times(task.schedule, START, end))
        busy_until = [d + dt.timedelta(seconds=rng.uniform(5, 60)) for d in dues]
        executions += len(dues)
        state, since, woke_at, last_used = "asleep", START, None, None
        ready_at: dt.datetime | None = None
        # Moments at which something can change, in order: due times, and checks we schedule.
        checks: list[dt.datetime] = [on_grid(START)]
        due_index = 0
        while checks:
            now = heapq.heappop(checks)
            if now > end:
                break
            while due_index < len(dues) and dues[due_index] <= now:
                due = dues[due_index]
                is_ready = state in ("waking", "ready") and ready_at is not None and ready_at <= due
                if not is_ready:
                    cold += 1  # the dispatcher would wake it on demand and wait
                    if state == "asleep":
                        state, since, woke_at, ready_at = "waking", due, due, due + wake_delay[name]
                        wakes += 1
                last_used = max(last_used or due, busy_until[due_index])
                due_index += 1
            if state == "waking" and ready_at is not None and ready_at <= now:
                state = "ready"
            busy = last_used is not None and last_used > now
            view = AgentView(state, since, woke_at, min(last_used, now) if last_used else None, busy)
            upcoming = next_due(tasks_of[name], now, horizon(spec))
            decision = decide(spec, view, now, upcoming)
            if decision.action == "wake":
                state, since, woke_at, ready_at = "waking", now, now, now + wake_delay[name]
                wakes += 1
            elif decision.action == "sleep":
                up_seconds += (now - (woke_at or now)).total_seconds()
                state, since, woke_at, ready_at = "asleep", now, None, None
            # When to look again: the next moment the rules could decide differently.
            if state == "asleep":
                following = next_due(tasks_of[name], now + dt.timedelta(seconds=TICK_S), dt.timedelta(days=2))
                if following is None:
                    continue
                look = following[0] - dt.timedelta(seconds=spec.lead)
            else:
                look = max(
                    now + dt.timedelta(seconds=TICK_S),
                    (last_used or now) + dt.timedelta(seconds=spec.idle_after),
                    (woke_at or now) + dt.timedelta(seconds=spec.min_up),
                )
                if ready_at is not None and state == "waking":
                    look = min(look, ready_at)
                if due_index < len(dues):
                    look = min(look, dues[due_index])
            heapq.heappush(checks, on_grid(max(look, now + dt.timedelta(seconds=TICK_S))))
            if due_index < len(dues) and (not checks or dues[due_index] < checks[0]):
                heapq.heappush(checks, dues[due_index])
        if state != "asleep" and woke_at is not None:
            up_seconds += (end - woke_at).total_seconds()
    elapsed = time.perf_counter() - started
    always_on = agents * hours
    with_lifecycle = up_seconds / 3600
    print(f"\n== {agents} agents, {hours:g} h, {executions:,} executions (simulated in {elapsed:.1f} s)")
    print(f"  agent-hours always on:      {always_on:10,.0f}")
    print(f"  agent-hours with lifecycle: {with_lifecycle:10,.0f}  ({100 * (1 - with_lifecycle / always_on):.1f}% fewer; always on / lifecycle = {always_on / max(with_lifecycle, 1e-9):.1f}x)")
    print(f"  cold starts (a due time that found its agent not ready): {cold}")
    print(f"  wake calls: {wakes:,} ({wakes / hours:,.0f} per hour)")
    return {"always_on": always_on, "lifecycle": with_lifecycle, "cold": cold, "wakes": wakes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    simulate(args.agents, args.hours, args.seed)


if __name__ == "__main__":
    main()
