"""Agents that sleep between tasks, at fleet scale: a day of 1,000 agents on a virtual clock.

    .venv/bin/python benchmarks/bench_lifecycle.py --agents 1000 --hours 24

A realistic catalog (tasks generated as YAML and loaded by the real catalog loader): by default
80% of the agents carry 1-3 daily tasks, 17% an hourly one, 3% one every minute (`--daily`,
`--hourly`). Each agent has a
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
import bisect
import datetime as dt
import heapq
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_pipelines.catalog.loader import load_catalog  # noqa: E402
from agent_pipelines.lifecycle.decisions import AgentView, decide, horizon  # noqa: E402
from agent_pipelines.scheduling.timing import due_times, parse_due  # noqa: E402

TICK_S = 5.0  # the sensor's interval
START = parse_due("2026-12-01T00:00:00Z")
#: The platform runs from this long before the measured day: agents are not all woken at 00:00.
WARM_UP = dt.timedelta(minutes=15)


def catalog_yaml(agents: int, rng: random.Random, daily: float, hourly: float) -> str:
    lines = ["agents:"]
    tasks = ["tasks:"]
    for i in range(agents):
        name = f"agent_{i:04d}"
        lines.append(
            f"  - {{name: {name}, kind: openai_chat, model: m, base_url: 'http://127.0.0.1:9', "
            "lifecycle: {kubernetes: {name: " + name.replace("_", "-") + "}, lead: 2m, idle_after: 10m, min_up: 5m}}"
        )
        kind = rng.random()
        if kind < daily:
            for j in range(rng.randint(1, 3)):
                tasks.append(f"  - {{name: {name}_daily_{j}, owner: x, agent: {name}, prompt: p, schedule: '{rng.randint(0, 59)} {rng.randint(0, 23)} * * *'}}")
        elif kind < daily + hourly:
            tasks.append(f"  - {{name: {name}_hourly, owner: x, agent: {name}, prompt: p, schedule: '{rng.randint(0, 59)} * * * *'}}")
        else:
            tasks.append(f"  - {{name: {name}_minutely, owner: x, agent: {name}, prompt: p, schedule: '* * * * *'}}")
    return "\n".join(lines + tasks) + "\n"


def on_grid(moment: dt.datetime) -> dt.datetime:
    """The first sensor tick at or after `moment`."""
    origin = START - WARM_UP
    seconds = (moment - origin).total_seconds()
    return origin + dt.timedelta(seconds=-(-seconds // TICK_S) * TICK_S)


def simulate(agents: int, hours: float, seed: int, daily: float, hourly: float) -> dict[str, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "catalog.yaml").write_text(catalog_yaml(agents, rng, daily, hourly))
        catalog = load_catalog(Path(tmp))
    assert catalog.ok, catalog.problems[:3]
    end = START + dt.timedelta(hours=hours)
    tasks_of: dict[str, list] = {name: [] for name in catalog.agents}
    for task in catalog.regular_tasks.values():
        tasks_of[task.agent].append(task)
    wake_delay = {name: dt.timedelta(seconds=rng.uniform(20, 90)) for name in catalog.agents}

    up_seconds = 0.0
    cold = wakes = executions = 0
    cold_cases: list[str] = []
    started = time.perf_counter()
    for name, agent in catalog.agents.items():
        spec = agent.lifecycle
        assert spec is not None
        # The agent's work: every due time (from the planner's due_times), busy for 5-60 s.
        timed = sorted((d, task.name) for task in tasks_of[name] for d in due_times(task.schedule, START - WARM_UP, end + dt.timedelta(days=1)))
        ahead = [d for d, _ in timed]
        dues = [d for d in ahead if d < end]

        def upcoming_within(now: dt.datetime, within: dt.timedelta) -> tuple[dt.datetime, str] | None:
            """What `next_due` answers, read off the agent's due times (computed once)."""
            at = bisect.bisect_left(ahead, now)
            return timed[at] if at < len(timed) and timed[at][0] < now + within else None

        busy_until = [d + dt.timedelta(seconds=rng.uniform(5, 60)) for d in dues]
        executions += sum(1 for d in dues if d >= START)
        state, since, woke_at, last_used = "asleep", START - WARM_UP, None, None
        ready_at: dt.datetime | None = None
        # Moments at which something can change, in order: due times, and checks we schedule.
        checks: list[dt.datetime] = [on_grid(START - WARM_UP)]
        due_index = 0
        while checks:
            now = heapq.heappop(checks)
            if now > end:
                break
            while due_index < len(dues) and dues[due_index] <= now:
                due = dues[due_index]
                is_ready = state in ("waking", "ready") and ready_at is not None and ready_at <= due
                if not is_ready:
                    cold += due >= START  # the dispatcher would wake it on demand and wait
                    if len(cold_cases) < 5 and due >= START:
                        cold_cases.append(f"{name} due {due:%H:%M:%S}: {state}, woke {woke_at and f'{woke_at:%H:%M:%S}'}, ready {ready_at and f'{ready_at:%H:%M:%S}'}")
                    if state == "asleep":
                        state, since, woke_at, ready_at = "waking", due, due, due + wake_delay[name]
                        wakes += due >= START
                last_used = max(last_used or due, busy_until[due_index])
                due_index += 1
            if state == "waking" and ready_at is not None and ready_at <= now:
                state = "ready"
            busy = last_used is not None and last_used > now
            view = AgentView(state, since, woke_at, min(last_used, now) if last_used else None, busy)
            upcoming = upcoming_within(now, horizon(spec))
            decision = decide(spec, view, now, upcoming)
            if decision.action == "wake":
                state, since, woke_at, ready_at = "waking", now, now, now + wake_delay[name]
                wakes += now >= START
            elif decision.action == "sleep":
                up_seconds += max(0.0, (now - max(woke_at or now, START)).total_seconds())
                state, since, woke_at, ready_at = "asleep", now, None, None
            # When to look again: the next moment the rules could decide differently.
            if state == "asleep":
                following = upcoming_within(now + dt.timedelta(seconds=TICK_S), dt.timedelta(days=2))
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
            up_seconds += (end - max(woke_at, START)).total_seconds()
    elapsed = time.perf_counter() - started
    always_on = agents * hours
    with_lifecycle = up_seconds / 3600
    mix = f"{daily:.0%} daily (1-3 tasks), {hourly:.0%} hourly, {1 - daily - hourly:.0%} every minute"
    print(f"\n== {agents} agents ({mix}), {hours:g} h, {executions:,} executions (simulated in {elapsed:.1f} s)")
    print(f"  agent-hours always on:      {always_on:10,.0f}")
    print(f"  agent-hours with lifecycle: {with_lifecycle:10,.0f}  ({100 * (1 - with_lifecycle / always_on):.1f}% fewer; always on / lifecycle = {always_on / max(with_lifecycle, 1e-9):.1f}x)")
    print(f"  cold starts (a due time that found its agent not ready): {cold}" + "".join(f"\n    {case}" for case in cold_cases))
    print(f"  wake calls: {wakes:,} ({wakes / hours:,.0f} per hour)")
    return {"always_on": always_on, "lifecycle": with_lifecycle, "cold": cold, "wakes": wakes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--daily", type=float, default=0.80, help="share of agents with 1-3 daily tasks")
    parser.add_argument("--hourly", type=float, default=0.17, help="share with an hourly task (the rest: every minute)")
    args = parser.parse_args()
    simulate(args.agents, args.hours, args.seed, args.daily, args.hourly)


if __name__ == "__main__":
    main()
