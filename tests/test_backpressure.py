"""Back-pressure end to end: a real demo agent that works on two requests at once (the rest wait
inside it, like a saturated gateway), driven above its capacity by the real dispatcher on a real
SQLite store. The limit comes down from `max_concurrency`, the agent never holds much more than
it, what waits past its deadline is recorded `skipped` with the queue and the agent's latency,
`latest_only` due times are superseded, nothing is lost, and the agent's `not_saturated` check
fails while it is saturated (through `agent_load_sensor`, as the daemon runs it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.agents.base import AgentCallError, AgentRequest, SessionState
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import DemoAgentConfig, RunningDemoAgent, run_in_thread
from agent_pipelines.lifecycle.report import agent_rows
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.admission import SATURATED, STILL_RUNNING, SUPERSEDED
from agent_pipelines.scheduling.dispatcher import Dispatcher
from agent_pipelines.scheduling.load import SATURATED_FOR, agent_loads, summarize
from agent_pipelines.scheduling.load_publication import NOT_SATURATED_CHECK
from agent_pipelines.scheduling.plans import window_plan
from agent_pipelines.scheduling.publication import agent_asset_key
from agent_pipelines.store import Claim, StateStore, status
from tests.conftest import TEST_TOKEN, sensor_context, write_catalog

UTC = dt.timezone.utc
CAPACITY = 2
LATENCY_MS = 400  # so the agent serves 5 requests a second
TASKS = 8  # each due every second, 2 of them latest_only: 8 requests a second offered
WINDOW_S = 8
MAX_CONCURRENCY = 8

SLOW_AGENT = f"""\
- name: slow
  kind: openai_chat
  base_url: {{url}}
  auth_env: DEMO_AGENT_TOKEN
  model: demo-model
  timeout: 20s
  max_concurrency: {MAX_CONCURRENCY}
"""


@pytest.fixture
def saturated_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningDemoAgent]:
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=LATENCY_MS, capacity=CAPACITY)) as agent:
        yield agent


def _catalog(tmp_path: Path, agent: RunningDemoAgent):
    tasks = ["tasks:"]
    for i in range(TASKS):
        overload = "latest_only" if i < 2 else "all"
        tasks.append(
            f"  - {{name: poll_{i}, owner: ops, agent: slow, prompt: 'poll {i} at {{{{ due_time.isoformat() }}}}', "
            f"schedule: {{every: 1s}}, misfire: {{grace: 2s}}, overload: {overload}, priority: {1 if i == 7 else 0}}}"
        )
    catalog = load_catalog(write_catalog(tmp_path / "catalog", agent.url, "\n".join(tasks) + "\n", SLOW_AGENT.format(url=agent.url)))
    assert catalog.ok, catalog.problems
    return catalog


def _latest_check(instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation | None:
    record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(agent_asset_key("slow"), NOT_SATURATED_CHECK))
    return record.evaluation if record is not None else None


def test_a_saturated_agent_gets_back_pressure_not_a_pile_up(tmp_path: Path, instance: dg.DagsterInstance, saturated_agent: RunningDemoAgent) -> None:
    catalog = _catalog(tmp_path, saturated_agent)
    store = StateStore.for_instance(instance)
    start = dt.datetime.fromtimestamp(int(time.time()) + 2, UTC)
    end = start + dt.timedelta(seconds=WINDOW_S)
    plan = window_plan(catalog, store, start, end, None, dt.datetime.now(UTC))
    assert len(plan.items) == TASKS * WINDOW_S
    dispatcher = Dispatcher(catalog=catalog, store=store, run_id="run-bp", publish=lambda _p: None)
    runner = threading.Thread(target=lambda: event_loop.run(dispatcher.run(plan)), daemon=True)
    runner.start()

    sensor = build_definitions(catalog).resolve_sensor_def("agent_load_sensor")
    cursor: str | None = None
    seen_failing = None
    limits: list[int] = []
    deadline = time.monotonic() + WINDOW_S + 40
    while runner.is_alive() and time.monotonic() < deadline:
        gate = dispatcher.load._gates.get("slow")  # the test watches the limit move
        if gate is not None:
            limits.append(gate.limit)
        if seen_failing is None:
            result = sensor.evaluate_tick(sensor_context(instance, cursor))
            cursor = result.cursor
            evaluation = _latest_check(instance)
            if evaluation is not None and not evaluation.passed:
                seen_failing = evaluation
        time.sleep(0.05)
    runner.join(5)
    assert not runner.is_alive(), "the dispatcher finished"

    # Nothing lost: every due time ended succeeded, or skipped with its reason.
    executions = [e for i in range(TASKS) for e in store.executions_for_task(f"poll_{i}")]
    assert len(executions) == TASKS * WINDOW_S
    assert {e.status for e in executions} <= {status.SUCCEEDED, status.SKIPPED}, {e.status for e in executions}
    saturated = [e for e in executions if e.status == status.SKIPPED and e.reason.startswith(SATURATED)]
    superseded = [e for e in executions if e.status == status.SKIPPED and e.reason.startswith(SUPERSEDED)]
    assert saturated and superseded, [e.reason for e in executions if e.status == status.SKIPPED]
    assert all(e.task in ("poll_0", "poll_1") for e in superseded), "only latest_only tasks are superseded"
    assert all("queue length" in e.reason and "agent latency" in e.reason for e in saturated), saturated[0].reason
    succeeded = [e for e in executions if e.status == status.SUCCEEDED]
    assert len(succeeded) >= WINDOW_S * 2, "the agent was kept busy"
    assert {e.task for e in saturated}.isdisjoint({"poll_7"}) or len([e for e in succeeded if e.task == "poll_7"]) >= WINDOW_S - 2, (
        "the task with priority goes first"
    )

    # The limit came down from max_concurrency, and the agent never held much more than it.
    assert limits and limits[0] == MAX_CONCURRENCY and min(limits) <= 2 * CAPACITY, limits[::20]
    converged_at = start.timestamp() + 4
    late = [n for at, n in saturated_agent.state.outstanding_log() if at >= converged_at]
    assert late and max(late) <= 2 * CAPACITY + 2, max(late)

    # Visible: the check failed while it was saturated, the CLI says so, and it clears afterwards.
    assert seen_failing is not None, "not_saturated failed while the agent was saturated"
    assert "Saturated" in (seen_failing.description or "")
    now = dt.datetime.now(UTC)
    header, *rows = agent_rows(catalog, store, now)
    shown = {row[0]: dict(zip(header, row)) for row in rows}["slow"]
    assert shown["saturated"] == "yes" and shown["limit"].split(" ")[0].endswith(f"/{MAX_CONCURRENCY}") and shown["queued"] == "0", shown
    summary = agent_loads(store, ["slow"], now)["slow"]
    assert summary.in_flight == 0 and summary.skipped == len(saturated)
    later = summarize(store.agent_loads(["slow"]), now + SATURATED_FOR + dt.timedelta(seconds=1))["slow"]
    assert not later.saturated


def test_batch_and_judge_calls_share_the_agents_learned_limit(tmp_path: Path, demo_agent: RunningDemoAgent) -> None:
    """`AgentConnection.invoke` (batch shards, fleet nodes, the judge) goes through the same gate:
    a 503 cuts the agent's limit, every permit is given back."""
    catalog = _catalog(tmp_path, demo_agent)
    demo_agent.push_faults([{"status": 503}])

    async def calls() -> tuple[int, int, int]:
        async with AgentPool(catalog.agents) as pool:
            connection = pool.connection("slow")
            before = connection.gate.limit

            def request(n: int) -> AgentRequest:
                return AgentRequest(prompt=f"item {n}", idempotency_key=f"k{n}", session=SessionState("isolated", f"s{n}"), timeout_s=5, task="batch")

            with pytest.raises(AgentCallError):
                await connection.invoke(request(0))
            await asyncio.gather(*(connection.invoke(request(n)) for n in range(1, 4)))
            return before, connection.gate.limit, connection.gate.in_flight

    before, after, in_flight = event_loop.run(calls())
    assert before == MAX_CONCURRENCY and after < MAX_CONCURRENCY and in_flight == 0


def test_skip_while_running_keeps_one_execution_of_a_task_in_flight(tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    """`overload: skip_while_running` (as OpenClaw's and Hermes' own cron do, but recorded): a due
    time is skipped while an earlier one of its task is in flight, in this run or in another."""
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=2500)) as agent:
        tasks = (
            "tasks:\n"
            "  - {name: poll, owner: ops, agent: slow, prompt: 'poll {{ due_time.isoformat() }}', schedule: {every: 1s}, overload: skip_while_running}\n"
            "  - {name: held, owner: ops, agent: slow, prompt: 'held {{ due_time.isoformat() }}', schedule: {every: 1s}, overload: skip_while_running}\n"
        )
        catalog = load_catalog(write_catalog(tmp_path / "catalog", agent.url, tasks, SLOW_AGENT.format(url=agent.url)))
        assert catalog.ok, catalog.problems
        store = StateStore.for_instance(instance)
        # `held` has a request in flight in another run (still `sending`): none of its due times here go.
        store.claim([Claim("held-elsewhere", "held", "slow", "other-run", "schedule", None, "v")])
        store.start_attempts(["held-elsewhere"], "other-run", dt.datetime.now(UTC))
        start = dt.datetime.fromtimestamp(int(time.time()) + 2, UTC)
        plan = window_plan(catalog, store, start, start + dt.timedelta(seconds=6), None, dt.datetime.now(UTC))
        dispatcher = Dispatcher(catalog=catalog, store=store, run_id="run-swr", publish=lambda _p: None)
        event_loop.run(dispatcher.run(plan))
        sent = sorted(r.received_at for r in agent.requests() if "poll" in r.body["messages"][-1]["content"])

    polls = sorted(store.executions_for_task("poll"), key=lambda e: e.due_time)
    assert len(polls) == 6 and {e.status for e in polls} == {status.SUCCEEDED, status.SKIPPED}
    skipped = [e for e in polls if e.status == status.SKIPPED]
    assert all(e.reason.startswith(f"{STILL_RUNNING}: its due time 20") and "skip_while_running" in e.reason for e in skipped), skipped[0].reason
    assert 2 <= len(sent) <= 3, "one every ~2.5 s answer, none while the previous is in flight"
    assert all(later - earlier >= 2.4 for earlier, later in zip(sent, sent[1:])), sent
    held = [e for e in store.executions_for_task("held") if e.idempotency_key != "held-elsewhere"]
    assert len(held) == 6 and all(e.status == status.SKIPPED and "held-elsewhere" in e.reason for e in held), [e.reason for e in held]


def test_wait_while_running_sends_the_newest_due_time_as_soon_as_the_earlier_one_is_answered(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`overload: wait_while_running`: one execution of the task at a time, as with
    `skip_while_running`, but a due time that comes meanwhile waits for it (the newest one, until
    its misfire deadline) and goes as soon as it is answered: back to back, never two at once.
    An earlier one in flight in another run is looked at again every second."""
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=2500)) as agent:
        tasks = (
            "tasks:\n"
            "  - {name: poll, owner: ops, agent: slow, prompt: 'poll {{ due_time.isoformat() }}', schedule: {every: 1s},"
            " misfire: {grace: 2s}, overload: wait_while_running}\n"
            "  - {name: held, owner: ops, agent: slow_too, prompt: 'held {{ due_time.isoformat() }}', schedule: {every: 3s},"
            " misfire: {grace: 5s}, overload: wait_while_running}\n"
        )
        # Two agents on one server: each learns its own limit (1 while its first baseline is measured).
        agents = SLOW_AGENT.format(url=agent.url) + SLOW_AGENT.format(url=agent.url).replace("name: slow", "name: slow_too")
        catalog = load_catalog(write_catalog(tmp_path / "catalog", agent.url, tasks, agents))
        assert catalog.ok, catalog.problems
        store = StateStore.for_instance(instance)
        # `held` has a request in flight in another run until that run is released, 4.5 s in.
        store.claim([Claim("held-elsewhere", "held", "slow", "other-run", "schedule", None, "v")])
        store.start_attempts(["held-elsewhere"], "other-run", dt.datetime.now(UTC))
        start = dt.datetime.fromtimestamp((int(time.time()) + 2) // 3 * 3 + 3, UTC)  # `held` is due at start, +3 s, +6 s
        release = threading.Timer(start.timestamp() + 4.5 - time.time(), store.release_run, ("other-run", "the test ends it"))
        release.start()
        plan = window_plan(catalog, store, start, start + dt.timedelta(seconds=8), None, dt.datetime.now(UTC))
        dispatcher = Dispatcher(catalog=catalog, store=store, run_id="run-wwr", publish=lambda _p: None)
        event_loop.run(dispatcher.run(plan))
        release.join()

    polls = sorted(store.executions_for_task("poll"), key=lambda e: e.due_time)
    assert len(polls) == 8 and {e.status for e in polls} == {status.SUCCEEDED, status.SKIPPED}
    sent = [e for e in polls if e.status == status.SUCCEEDED]
    assert len(sent) >= 3, "one after another (skip_while_running sends every other due time at best)"
    for earlier, later in zip(sent, sent[1:]):
        assert earlier.answered_at is not None and later.sent_at is not None and later.due_time is not None
        assert later.due_time < earlier.answered_at <= later.sent_at, "due while the earlier one was in flight: it waited for it"
    skipped = [e for e in polls if e.status == status.SKIPPED]
    assert skipped and all(e.reason.startswith(f"{SUPERSEDED}: a newer due time of this task") for e in skipped), [e.reason for e in skipped]

    # `held` (every 3 s, grace 5 s): its first due time waited for the other run's request and was
    # replaced by the next, which went once that run ended, 4.5 s in.
    held = sorted((e for e in store.executions_for_task("held") if e.idempotency_key != "held-elsewhere"), key=lambda e: e.due_time)
    assert [e.status for e in held] == [status.SKIPPED, status.SUCCEEDED, status.SUCCEEDED], [(e.status, e.reason) for e in held]
    assert held[0].reason.startswith(SUPERSEDED), held[0].reason
    released = start.timestamp() + 4.5
    assert held[1].due_time is not None and held[1].sent_at is not None
    assert held[1].due_time.timestamp() < released <= held[1].sent_at.timestamp(), "due while the other run's was in flight"
