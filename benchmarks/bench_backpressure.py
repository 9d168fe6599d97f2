"""Back-pressure against the real OpenClaw gateway, beside the gateway's own cron, in one run.

    .venv/bin/python benchmarks/bench_backpressure.py --tasks 4 --period 20 --minutes 4

One real OpenClaw gateway (npm `openclaw`, tests/support/openclaw.py) on 127.0.0.1 behind the
fake LLM (tests/support/fake_llm.py), which works on one request at a time for `--llm-latency`
seconds: the model serves 1/latency requests a second, about half of what is offered. Offered:
`--tasks` agent_pipelines tasks and as many gateway cron jobs (`openclaw cron add --cron
"*/P * * * * *" --exact`, isolated sessions, no delivery), all every `--period` seconds, due at
the same instants. The agent_pipelines tasks go through the real dispatcher (one run per
minute window, created ahead and overlapping like the scheduler's window runs, on a SQLite
store) to the gateway's `/v1/chat/completions`, with each `--overload` in turn (`latest_only`,
`skip_while_running`: one measured run each) and the default misfire grace (60 s). Every
prompt carries a marker: agent_pipelines' names the task and the due time, the cron job's names
the job (its due time is the slot its run started in, from the gateway's run history).

Per due time in the measured window: when it reached the model (the fake LLM began on it),
whether it completed, was skipped with a recorded reason, or was lost (nothing reached the
model and nothing says why). `--baseline fixed` runs the agent_pipelines side again without
back-pressure (limit pinned at max_concurrency, no deadline: what the dispatcher did before),
in the same gateway, for the ratio.

`--warm-up N` starts both sides N minutes before the measured window (steady state: the
limiter's first probe on a fresh store and the gateway's first turns fall outside it; a platform
that runs for days learns its agents once). Each run also prints how many seconds of the
measured window the agent's learned limit spent at each value, and `--trace DIR` writes its
timeline (one sample a second of the newest run's view: limit, in flight, waiting, and the
limiter's state: estimate, baseline, the fitted line's one-request latency, its answers).

Target (issue 15): agent_pipelines completes at least as many due executions as the gateway's own
cron, with p99 lateness at the model of what it completes no worse, and 0 lost.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_pipelines.agents.limiter import ConcurrencyGate, GradientLimiter, LimiterSettings
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import Catalog, load_catalog
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.dispatcher import Dispatcher
from agent_pipelines.scheduling.plans import window_plan
from agent_pipelines.store import StateStore, status
from tests.support.fake_llm import LlmCall, RunningFakeLlm, run_fake_llm
from tests.support.openclaw import RunningOpenClaw, run_openclaw

UTC = dt.timezone.utc
TOKEN_ENV = "BENCH_OPENCLAW_TOKEN"
AP_MARK = re.compile(r"bpap-(?P<run>\w+)-(?P<task>\d+) due (?P<due>\S+)")
GW_MARK = re.compile(r"bpgw-(?P<run>\w+)-(?P<job>\d+)\b")
#: Windows' runs are created this long before their window, like the scheduler's (75 s there).
RUN_LEAD_S = 20.0


@dataclass
class Side:
    """What became of one side's due times in the measured window."""

    name: str
    due: int = 0
    completed: int = 0
    skipped: int = 0  # with a recorded reason
    unknown: int = 0  # sent, outcome not known (a timeout): recorded with its reason
    lost: int = 0  # never reached the model, nothing recorded why
    lateness_s: list[float] = field(default_factory=list)  # at the model, of what completed
    reasons: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        late = sorted(self.lateness_s)
        p50 = _pct(late, 0.5)
        p99 = _pct(late, 0.99)
        return (
            f"| {self.name} | {self.due} | {self.completed} | {self.skipped} | {self.unknown} | {self.lost} | "
            f"{p50:.1f} s | {p99:.1f} s | {max(late) if late else float('nan'):.1f} s |"
        )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the agent_pipelines side ------------------------------------------------------------------


def _catalog(directory: Path, gateway: RunningOpenClaw, run: str, tasks: int, period: int, max_concurrency: int, fixed: bool, overload: str, grace_s: float = 60.0) -> Catalog:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "agents:",
        "  - name: claw",
        "    kind: openclaw",
        f"    base_url: {gateway.url}",
        f"    auth_env: {TOKEN_ENV}",
        "    timeout: 2m",
        f"    max_concurrency: {max_concurrency}",
        "tasks:",
    ]
    for i in range(tasks):
        lines += [
            f"  - name: bp_{run}_{i}",
            "    owner: bench",
            "    agent: claw",
            f"    schedule: {{cron: '*/{period} * * * * *'}}",
            f"    misfire: {{grace: {'3600' if fixed else f'{grace_s:g}'}s}}",
            f"    overload: {'all' if fixed else overload}",
            f"    prompt: 'bpap-{run}-{i} due {{{{ due_time.isoformat() }}}} -- one line of status, please.'",
        ]
    (directory / "catalog.yaml").write_text("\n".join(lines) + "\n")
    catalog = load_catalog(directory)
    assert catalog.ok, catalog.problems
    return catalog


def _fixed_pool(specs: Any) -> AgentPool:
    """The dispatcher before back-pressure: a fixed limit of max_concurrency."""
    pool = AgentPool(specs)
    original = pool._open  # the benchmark pins the gate of each connection the pool opens

    def pinned(spec: Any) -> Any:
        connection = original(spec)
        settings = LimiterSettings(min_limit=spec.max_concurrency, probe_every_s=1e12)
        connection.gate = ConcurrencyGate(GradientLimiter(spec.max_concurrency, settings))
        return connection

    pool._open = pinned  # type: ignore[method-assign]
    return pool


def _run_windows(catalog: Catalog, store: StateStore, start: dt.datetime, end: dt.datetime, fixed: bool, stop: threading.Event) -> list[threading.Thread]:
    """One dispatcher per minute window (like the scheduler's window runs), each started
    RUN_LEAD_S before its window; returns their threads."""
    threads = []
    window = start
    while window < end and not stop.is_set():
        launch = window.timestamp() - RUN_LEAD_S
        while time.time() < launch and not stop.is_set():
            time.sleep(0.2)
        window_end = min(window + dt.timedelta(minutes=1), end)
        plan = window_plan(catalog, store, window, window_end, None, dt.datetime.now(UTC))
        dispatcher = Dispatcher(
            catalog=catalog,
            store=store,
            run_id=f"window-{window:%H%M}-{'fixed' if fixed else 'bp'}",
            publish=lambda _p: None,
            pool_factory=_fixed_pool if fixed else AgentPool,
        )
        thread = threading.Thread(target=lambda d=dispatcher, p=plan: event_loop.run(d.run(p)), daemon=True)
        thread.start()
        threads.append(thread)
        window = window_end
    return threads


def _ap_side(name: str, store: StateStore, catalog: Catalog, calls: list[LlmCall], run: str, start: dt.datetime, end: dt.datetime) -> Side:
    side = Side(name)
    reached: dict[tuple[str, str], LlmCall] = {}
    for call in calls:
        for text in call.user_texts():
            match = AP_MARK.search(text)
            if match and match["run"] == run:
                reached.setdefault((match["task"], match["due"]), call)
    for task in catalog.tasks:
        index = task.rsplit("_", 1)[1]
        for execution in store.executions_for_task(task, limit=100_000):
            if execution.due_time is None or not (start <= execution.due_time < end):
                continue
            side.due += 1
            call = reached.get((index, execution.due_time.isoformat()))
            if execution.status == status.SUCCEEDED and call is not None and call.finished_at is not None:
                side.completed += 1
                side.lateness_s.append((call.served_at or call.started_at) - execution.due_time.timestamp())
            elif execution.status in (status.SKIPPED, status.FAILED, status.MISSED) and execution.reason:
                side.skipped += 1
                why = execution.reason.split(":", 1)[0]
                side.reasons[why] = side.reasons.get(why, 0) + 1
            elif execution.status == status.UNKNOWN:
                side.unknown += 1
            else:
                side.lost += 1
    # Due times never claimed at all would be lost too: count them against the schedule.
    expected = len(catalog.tasks) * int((end - start).total_seconds() // _period(catalog))
    side.lost += max(0, expected - side.due)
    side.due = max(side.due, expected)
    return side


def _period(catalog: Catalog) -> int:
    task = next(iter(catalog.tasks.values()))
    return int(task.schedule.cron.split()[0].split("/")[1])  # type: ignore[union-attr]


# -- the gateway's own cron --------------------------------------------------------------------


def _add_cron_jobs(gateway: RunningOpenClaw, run: str, jobs: int, period: int) -> list[str]:
    """The jobs, disabled (each `cron add` takes seconds): `_all_at_once` enables them."""
    ids = []
    for i in range(jobs):
        job = gateway.cli_json(
            "cron", "add", "--name", f"bp-{run}-{i}", "--cron", f"*/{period} * * * * *", "--exact",
            "--message", f"bpgw-{run}-{i} one line of status, please.", "--session", "isolated",
            "--no-deliver", "--agent", "main", "--light-context", "--disabled", "--json",
        )
        ids.append(job["id"])
    return ids


def _all_at_once(gateway: RunningOpenClaw, action: str, ids: list[str]) -> None:
    threads = [threading.Thread(target=gateway.cli, args=("cron", action, job_id)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def _gw_side(gateway: RunningOpenClaw, ids: list[str], calls: list[LlmCall], run: str, start: dt.datetime, end: dt.datetime, period: int) -> Side:
    side = Side("gateway cron")
    slots = [start.timestamp() + k * period for k in range(int((end - start).total_seconds() // period))]
    by_job: dict[str, list[LlmCall]] = {}
    for call in calls:
        for text in call.user_texts():
            match = GW_MARK.search(text)
            if match and match["run"] == run:
                by_job.setdefault(match["job"], []).append(call)
                break
    for index, job_id in enumerate(ids):
        entries = gateway.cli_json("cron", "runs", "--id", job_id, "--limit", "200", "--json").get("entries") or []
        runs: dict[float, dict[str, Any]] = {}
        for entry in entries:
            run_at = entry.get("runAtMs")
            if run_at is None:
                continue
            slot = (run_at / 1000.0) // period * period  # the slot its run started in
            runs.setdefault(slot, entry)
        job_calls = sorted(by_job.get(str(index), []), key=lambda c: c.started_at)
        for slot in slots:
            side.due += 1
            entry = runs.get(slot)
            if entry is None:
                side.lost += 1  # the gateway never ran this slot and recorded nothing about it
                continue
            run_at = entry["runAtMs"] / 1000.0
            finished = run_at + (entry.get("durationMs") or 0) / 1000.0
            call = next((c for c in job_calls if run_at - 1 <= c.started_at <= finished + 1), None)
            if entry.get("status") == "ok" and call is not None:
                side.completed += 1
                side.lateness_s.append((call.served_at or call.started_at) - slot)
            elif entry.get("status") in ("skipped", "error"):
                side.skipped += 1
                why = str(entry.get("error") or entry.get("status"))[:60]
                side.reasons[why] = side.reasons.get(why, 0) + 1
            else:
                side.lost += 1
    return side


# -- one measurement -----------------------------------------------------------------------------


@contextlib.contextmanager
def _platform(llm_latency: float) -> Iterator[tuple[RunningFakeLlm, RunningOpenClaw]]:
    with tempfile.TemporaryDirectory(prefix="bench-bp-") as home, run_fake_llm(latency_s=llm_latency, concurrency=1) as llm:
        with run_openclaw(Path(home) / "openclaw", llm) as gateway:
            llm.state.latency_s = 0.0
            gateway.warm_up()
            llm.state.latency_s = llm_latency
            yield llm, gateway


def measure(
    llm: RunningFakeLlm, gateway: RunningOpenClaw, workdir: Path, *, run: str, tasks: int, period: int, minutes: float, fixed: bool, drain_s: float, overload: str,
    warm_up: int = 0, grace_s: float = 60.0,
) -> tuple[Side, Side, dict[str, Any]]:
    store = StateStore.for_url(f"sqlite:///{workdir / f'{run}.db'}")
    catalog = _catalog(workdir / f"catalog-{run}", gateway, run, tasks, period, max_concurrency=tasks, fixed=fixed, overload=overload, grace_s=grace_s)
    ids = _add_cron_jobs(gateway, run, tasks, period)
    now = time.time()
    begin = dt.datetime.fromtimestamp((now + RUN_LEAD_S + 15) // 60 * 60 + 60, UTC)
    start = begin + dt.timedelta(minutes=warm_up)  # both sides run from `begin`; due times from `start` count
    end = start + dt.timedelta(minutes=minutes)
    warming = f" after {warm_up} min of the same load from {begin:%H:%M:%S}" if warm_up else ""
    print(f"[{run}] measuring {start:%H:%M:%S}-{end:%H:%M:%S} UTC{warming} ({'no back-pressure' if fixed else f'back-pressure, overload: {overload}, misfire grace {grace_s:g} s'})", flush=True)
    stop = threading.Event()
    enabler = threading.Timer(max(0.0, begin.timestamp() - period / 2 - time.time()), _all_at_once, (gateway, "enable", ids))
    enabler.start()
    timeline: list[dict[str, Any]] = []
    sampler = threading.Thread(target=_sample_limits, args=(store, end, timeline), daemon=True)
    sampler.start()
    threads = _run_windows(catalog, store, begin, end, fixed, stop)
    sampler.join()
    enabler.join()
    _all_at_once(gateway, "disable", ids)  # no new cron runs after the window; the ones running finish
    deadline = time.time() + drain_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.time()))
    while time.time() < deadline and any(c.finished_at is None for c in llm.calls()):
        time.sleep(1)
    calls = llm.calls()
    ap = _ap_side("agent_pipelines" + (" (no back-pressure)" if fixed else f" ({overload}, grace {grace_s:g} s)"), store, catalog, calls, run, start, end)
    gw = _gw_side(gateway, ids, calls, run, start, end, period)
    for job_id in ids:
        gateway.cli("cron", "rm", job_id)
    loads = store.agent_loads(["claw"])
    measured = [sample for sample in timeline if sample["at"] >= start.timestamp()]
    info = {
        "start": start,
        "end": end,
        "limits": sorted({row.limit for row in loads} | {sample["limit"] for sample in measured}),
        "seconds_at_limit": dict(sorted(collections.Counter(sample["limit"] for sample in measured).items())),
        "timeline": timeline,
        "unfinished_llm": sum(1 for c in calls if c.finished_at is None),
    }
    return ap, gw, info


def _sample_limits(store: StateStore, until: dt.datetime, timeline: list[dict[str, Any]]) -> None:
    """Every second until `until`: the newest window run's view of the agent (its limit, what it
    had in flight and waiting, and the limiter's state: estimate, baseline, fitted line)."""
    while time.time() < until.timestamp():
        views = [v for v in store.agent_loads(["claw"], since=dt.datetime.now(UTC) - dt.timedelta(seconds=5)) if v.in_flight or v.queued]
        if views:
            newest = max(views, key=lambda v: v.updated_at)
            state = newest.state or {}
            timeline.append(
                {
                    "at": time.time(),
                    "limit": newest.limit,
                    "in_flight": sum(v.in_flight for v in views),
                    "queued": sum(v.queued for v in views),
                    "estimate": state.get("estimate"),
                    "baseline_s": state.get("baseline_s"),
                    "solo_s": state.get("solo_s"),
                    "probing": state.get("probing"),
                    "answers": state.get("answers"),
                }
            )
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4, help="agent_pipelines tasks, and as many gateway cron jobs")
    parser.add_argument("--period", type=int, default=20, help="seconds between due times (divides 60)")
    parser.add_argument("--minutes", type=float, default=4.0, help="measured window")
    parser.add_argument(
        "--warm-up", type=int, default=0,
        help="whole minutes both sides run the same load before the measured window (steady state: the limiter's first probe and the gateway's first turns fall outside it)",
    )
    parser.add_argument("--llm-latency", type=float, default=None, help="seconds per model answer (default: half the offered load)")
    parser.add_argument(
        "--overload", nargs="+", choices=["latest_only", "skip_while_running", "wait_while_running"], default=["latest_only", "skip_while_running"],
        help="the agent_pipelines tasks' overload policy: one measured run each",
    )
    parser.add_argument(
        "--grace", type=float, nargs="+", default=[60.0],
        help="the agent_pipelines tasks' misfire grace in seconds (how late a due time may still start): one measured run per overload and grace",
    )
    parser.add_argument("--baseline", choices=["fixed", "none"], default="fixed", help="also run agent_pipelines without back-pressure")
    parser.add_argument("--drain", type=float, default=150.0, help="seconds to wait for what is in flight after the window")
    parser.add_argument("--trace", type=Path, default=None, help="a directory: each run's limiter timeline (one sample a second) as <run>.json")
    args = parser.parse_args()
    offered = 2 * args.tasks / args.period  # requests a second, both sides
    llm_latency = args.llm_latency or 2.0 / offered  # serves half of it
    os.environ[TOKEN_ENV] = "openclaw-test-token"
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    print(f"offered {offered:.2f} requests/s; the model serves {1 / llm_latency:.2f}/s (one at a time, {llm_latency:.2f} s each)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-bp-work-") as work, _platform(llm_latency) as (llm, gateway):
        workdir = Path(work)
        choices = [(overload, grace) for overload in args.overload for grace in args.grace]
        runs = [(f"bp{n}", False, overload, grace) for n, (overload, grace) in enumerate(choices)]
        runs += [("fixed", True, "all", 3600.0)] if args.baseline == "fixed" else []
        for run, fixed, overload, grace in runs:
            results.append(measure(
                llm, gateway, workdir, run=run, tasks=args.tasks, period=args.period, minutes=args.minutes, fixed=fixed, drain_s=args.drain,
                overload=overload, warm_up=args.warm_up, grace_s=grace,
            ))
            if args.trace is not None:
                args.trace.mkdir(parents=True, exist_ok=True)
                (args.trace / f"{run}.json").write_text(json.dumps(results[-1][2]["timeline"]))
    print()
    print("| side | due | completed | skipped (reason recorded) | unknown | lost | lateness at model p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ap, gw, _info in results:
        print(ap.row())
        print(gw.row())
    for ap, gw, info in results:
        print(f"\n{ap.name} vs {gw.name} ({info['start']:%H:%M:%S}-{info['end']:%H:%M:%S}):")
        print(f"  skipped: {ap.reasons or '-'} / gateway: {gw.reasons or '-'}; learned limits seen: {info['limits']}; seconds at each limit: {info['seconds_at_limit']}")
        if gw.completed:
            print(f"  completed ratio agent_pipelines / gateway cron: {ap.completed / gw.completed:.2f}")
        if ap.lateness_s and gw.lateness_s:
            ratio = _pct(sorted(gw.lateness_s), 0.99) / _pct(sorted(ap.lateness_s), 0.99)
            print(f"  p99 lateness ratio gateway cron / agent_pipelines: {ratio:.2f}")
        if info["unfinished_llm"]:
            print(f"  {info['unfinished_llm']} model calls still unfinished at the end")
    print()
    for ap, gw, _info in results:
        ap_p99, gw_p99 = _pct(sorted(ap.lateness_s), 0.99), _pct(sorted(gw.lateness_s), 0.99)
        met = ap.completed >= gw.completed and ap.lost == 0 and (not ap.lateness_s or not gw.lateness_s or ap_p99 <= gw_p99)
        # the p99s to the millisecond: both sides queue in the same FIFO model, so their tails are often equal to 0.1 s
        figures = f"{ap.completed} vs {gw.completed} completed, p99 {ap_p99:.3f} vs {gw_p99:.3f} s, {ap.lost} lost"
        print(f"target (completed >= gateway cron, p99 no worse, 0 lost), {ap.name}: {'met' if met else 'NOT met'} ({figures})")


if __name__ == "__main__":
    main()
