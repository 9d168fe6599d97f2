"""The adaptive limit on virtual time: a simulated agent that serves `capacity` requests at once
(the rest queue inside it, as a gateway does) driven by a client that always has more to send.
The limit must come down to about the agent's capacity when its latency rises, come down on
overload errors, and go back up when the agent gets faster; and the gate must hand out permits
by rank, within the limit, counting other runs' requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import json
import random
from dataclasses import dataclass

import pytest

from agent_pipelines.agents.base import FailureKind
from agent_pipelines.agents.limiter import (
    ConcurrencyGate,
    GradientLimiter,
    LimiterSettings,
    LimiterState,
    fit_latency_line,
    outcome_of,
)
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.lifecycle.report import _load_columns
from agent_pipelines.scheduling.load import summarize
from agent_pipelines.scheduling.load_publication import load_metadata
from agent_pipelines.store.agent_load import AgentLoad


@dataclass
class Agent:
    """A FIFO multi-server queue: `capacity` requests served at once, each `service_s` ± jitter."""

    capacity: int
    service_s: float
    jitter: float = 0.1
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.free_at = [0.0] * self.capacity

    def resize(self, capacity: int, now: float) -> None:
        self.free_at = sorted(self.free_at)[:capacity] + [now] * max(0, capacity - len(self.free_at))
        self.capacity = capacity

    def answer_at(self, now: float) -> float:
        server = min(range(len(self.free_at)), key=lambda i: self.free_at[i])
        start = max(now, self.free_at[server])
        self.free_at[server] = start + self.service_s * (1 + self.jitter * (2 * self.rng.random() - 1))
        return self.free_at[server]


def drive(limiter: GradientLimiter, agent: Agent, start: float, until: float, error_every: int = 0) -> list[tuple[float, int, int]]:
    """Keep the limiter's limit in flight until `until`; (time, limit, in flight) after each answer."""
    now, in_flight, answered, trace = start, 0, 0, []
    pending: list[tuple[float, float, int]] = []  # (answer at, sent at, in flight when sent)
    while now < until:
        while in_flight < limiter.limit:
            in_flight += 1
            heapq.heappush(pending, (agent.answer_at(now), now, in_flight))
        done, sent, when_sent = heapq.heappop(pending)
        now, in_flight, answered = done, in_flight - 1, answered + 1
        if error_every and answered % error_every == 0:
            limiter.on_overload(sent, now)
        else:
            limiter.on_answer(done - sent, when_sent, sent, now)
        trace.append((now, limiter.limit, in_flight + 1))
    return trace


def drive_beside(
    limiter: GradientLimiter,
    agent: Agent,
    others: int,
    others_from: float,
    until: float,
    others_until: float = float("inf"),
    others_ramp_s: float = 0.0,
) -> tuple[list[tuple[float, int]], int, int]:
    """As `drive`, with another client that keeps `others` requests in the agent from
    `others_from` (to `others_until`) whatever their latency (a gateway's own cron jobs), the
    first of them at `others_from` and the last `others_ramp_s` later. Returns (time, limit)
    after each of our answers, and how many answers each side got after `others_from`."""
    now, ours_in_flight, trace, ours, theirs = 0.0, 0, [], 0, 0
    pending: list[tuple[float, float, int, bool]] = []  # (answer at, sent at, in flight when sent, ours)
    starts = [others_from + others_ramp_s * i / max(1, others - 1) for i in range(others)]
    started_others = False
    while now < until:
        while starts and now >= starts[0]:
            started_others = True
            starts.pop(0)
            heapq.heappush(pending, (agent.answer_at(now), now, 0, False))
        while ours_in_flight < limiter.limit:
            ours_in_flight += 1
            heapq.heappush(pending, (agent.answer_at(now), now, ours_in_flight, True))
        done, sent, when_sent, is_ours = heapq.heappop(pending)
        now = done
        if not is_ours:
            theirs += 1
            if now < others_until:
                heapq.heappush(pending, (agent.answer_at(now), now, 0, False))
            continue
        ours_in_flight -= 1
        ours += started_others
        limiter.on_answer(done - sent, when_sent, sent, now)
        trace.append((now, limiter.limit))
    return trace, ours, theirs


def drive_periodic(limiter: GradientLimiter, agent: Agent, tasks: int, period_s: float, grace_s: float, others_from: float,
                   until: float, measure_from: float) -> tuple[int, int]:
    """The benchmark's shape (benchmarks/bench_backpressure.py): `tasks` of ours and as many of
    another client's jobs, all due every `period_s`, one execution of each at a time. Ours wait
    for their previous execution and a permit up to `grace_s` past their due time, then are
    skipped; the other client's start 2-5 s late (a gateway's own cron) from `others_from`, and
    a job still running skips its slot. Returns how many due times after `measure_from` each
    side completed."""
    rng = random.Random(5)
    order = itertools.count()
    events: list[tuple[float, int, str, tuple]] = []
    for task in range(tasks):
        for k in range(int(until / period_s)):
            heapq.heappush(events, (k * period_s, next(order), "due", (task,)))
            due = others_from + k * period_s
            if due < until:
                heapq.heappush(events, (due + rng.uniform(2, 5), next(order), "theirs", (task, due)))
    waiting: list[tuple[float, int]] = []  # (due, task)
    running: set[int] = set()
    theirs_running: set[int] = set()
    in_flight, done = 0, {"ours": 0, "theirs": 0}
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "due":
            waiting.append((now, data[0]))
        elif kind == "theirs":
            task, due = data
            if task not in theirs_running:
                theirs_running.add(task)
                heapq.heappush(events, (agent.answer_at(now), next(order), "theirs_done", (task, due)))
        elif kind == "theirs_done":
            theirs_running.discard(data[0])
            done["theirs"] += data[1] >= measure_from
        elif kind == "ours_done":
            task, due, sent, when_sent = data
            running.discard(task)
            in_flight -= 1
            limiter.on_answer(now - sent, when_sent, sent, now)
            done["ours"] += due >= measure_from
        waiting = [(due, task) for due, task in sorted(waiting) if due + grace_s >= now]  # past its deadline: skipped
        for due, task in list(waiting):
            if in_flight >= limiter.limit:
                break
            if task not in running:
                waiting.remove((due, task))
                running.add(task)
                in_flight += 1
                heapq.heappush(events, (agent.answer_at(now), next(order), "ours_done", (task, due, now, in_flight)))
    return done["ours"], done["theirs"]


def test_others_load_that_arrives_after_the_first_probe_does_not_shrink_our_share() -> None:
    """The benchmark's cold start: the first probe measures the agent before the other client's
    jobs arrive (1 s), then their queue makes every answer 5-15 s. Answers to requests sent with
    none of ours ahead of them measure what a probe measures, so the baseline follows their queue
    at once instead of cutting our share while the latency line learns it."""
    limiter = GradientLimiter(10)
    ours, theirs = drive_periodic(limiter, Agent(1, service_s=1.0), tasks=10, period_s=10.0, grace_s=3.0,
                                  others_from=20.0, until=300.0, measure_from=60.0)
    assert ours >= 0.9 * theirs, (ours, theirs)  # before answers sent alone set the baseline: 0.81
    assert limiter.baseline_s is not None and limiter.baseline_s > 3.0, "the baseline is the agent under their load"


def test_a_queue_others_keep_in_the_agent_does_not_shrink_our_share_of_it() -> None:
    """Ten requests of another client are always in the agent, arriving after our first probe
    measured it idle: shrinking cannot remove their queue, only hand them our share."""
    limiter = GradientLimiter(10)
    trace, ours, theirs = drive_beside(limiter, Agent(1, service_s=1.0), others=10, others_from=20.0, until=900.0)
    settled = [limit for at, limit in trace if at > 300]
    assert sum(settled) / len(settled) >= 8, "it keeps about as many in flight as the other client"
    assert ours >= 0.7 * theirs, (ours, theirs)  # the limit before this fit: 0.44
    # One request of ours alone waits behind their ten: ~11 s, not the 1 s the first probe saw.
    assert limiter.solo_s is not None and limiter.reference_s == pytest.approx(11.0, rel=0.2)


def test_when_the_others_leave_the_limit_comes_back_down_to_our_own_queue() -> None:
    """A queue of others the line learned must not outlive them: the next probe measures the
    agent alone again."""
    limiter = GradientLimiter(10)
    trace, _ours, _theirs = drive_beside(limiter, Agent(1, service_s=1.0), others=10, others_from=20.0, others_until=400.0, until=1500.0)
    assert max(limit for at, limit in trace if 300 < at < 400) >= 9
    settled = [limit for at, limit in trace if at > 1100]
    assert sum(settled) / len(settled) <= 3.5, sum(settled) / len(settled)


def test_our_own_queue_beside_others_is_still_bounded() -> None:
    """Beside another client's 2 requests, our limit still stops our own queue from growing to
    max_concurrency: what one more request of ours costs is still measured."""
    limiter = GradientLimiter(40)
    trace, _ours, _theirs = drive_beside(limiter, Agent(1, service_s=1.0), others=2, others_from=20.0, until=900.0)
    settled = [limit for at, limit in trace if at > 300]
    assert sum(settled) / len(settled) <= 12, sum(settled) / len(settled)


def test_the_latency_line_says_what_one_request_of_ours_costs() -> None:
    settings = LimiterSettings()
    # 11 s at one request (the others' queue), 1 s more per request of ours, exactly.
    line = fit_latency_line([(n, 10.0 + n) for n in range(1, 11)] * 2, settings)
    assert line is not None
    assert line.solo_s == pytest.approx(11.0) and line.slope_s == pytest.approx(1.0)
    assert line.requests_within(22.1) == pytest.approx(12.1)
    assert fit_latency_line([(6, 12.0 + i % 3) for i in range(20)], settings) is None, "no spread: no slope"
    assert fit_latency_line([(n, 10.0 + n) for n in range(1, 6)], settings) is None, "too few answers"
    # Noise steepens the slope (one standard error): the line leans towards less room, not more.
    rng = random.Random(3)
    noisy = fit_latency_line([(n, 10.0 + n + rng.gauss(0, 2)) for n in range(1, 11)] * 3, settings)
    assert noisy is not None and noisy.slope_s > 1.0 - 0.3 and noisy.solo_s < 12.0


def test_no_probe_while_the_agent_is_slow_with_others_queue() -> None:
    """A probe drains our requests to measure the agent alone; while the fitted line says it is
    mostly others' queue the probe would measure that queue, so it waits."""
    limiter = GradientLimiter(10, LimiterSettings(probe_every_s=60.0), LimiterState(estimate=10.0, baseline_s=1.0, next_probe_at=100.0))
    for i in range(20):
        limiter.on_answer(10.0 + (i % 10 + 1), in_flight=i % 10 + 1, sent_at=float(i), now=50.0 + i)
    assert limiter.solo_s == pytest.approx(11.0, rel=0.05)
    limiter.on_answer(15.0, in_flight=5, sent_at=90.0, now=105.0)
    assert not limiter.probing and limiter.state.next_probe_at == pytest.approx(165.0)


def test_answers_sent_alone_set_the_baseline_and_put_off_the_probe() -> None:
    """A request sent with none of ours ahead of it measures what a probe would, without draining
    our requests to get it: the baseline is the median of the latest three."""
    limiter = GradientLimiter(10, state=LimiterState(estimate=10.0, baseline_s=1.0, next_probe_at=100.0))
    for i, latency in enumerate((6.0, 8.0, 7.0)):
        limiter.on_answer(latency, in_flight=1, sent_at=10.0 * i, now=10.0 * i + latency)
    assert limiter.baseline_s == 7.0 and limiter.state.next_probe_at == pytest.approx(27.0 + 300.0)
    limiter.on_answer(13.0, in_flight=10, sent_at=30.0, now=43.0)
    assert limiter.limit == 10, "13 s with 10 in flight is within twice the agent's 7 s alone"
    limiter.on_answer(2.0, in_flight=1, sent_at=45.0, now=47.0)
    assert limiter.baseline_s == 7.0, "one fast answer is not the median"
    restored = GradientLimiter(10, state=LimiterState.from_json(json.loads(json.dumps(limiter.state.to_json()))))
    assert list(restored.state.alone) == [8.0, 7.0, 2.0], "the next run continues from the same answers"


def test_a_probe_waits_while_the_line_says_one_request_of_ours_is_slower_than_the_baseline() -> None:
    """The line at one request 5 s beside a baseline of 4 s: others' queue is in the agent, and a
    probe would drain our requests only to measure it."""
    limiter = GradientLimiter(10, LimiterSettings(probe_every_s=60.0), LimiterState(estimate=10.0, baseline_s=4.0, next_probe_at=100.0))
    for i in range(20):
        n = i % 9 + 2
        limiter.on_answer(4.0 + n, in_flight=n, sent_at=float(i), now=50.0 + i)
    assert limiter.solo_s == pytest.approx(5.0, rel=0.05)
    limiter.on_answer(9.0, in_flight=5, sent_at=90.0, now=105.0)
    assert not limiter.probing and limiter.state.next_probe_at == pytest.approx(165.0)


@pytest.mark.parametrize("capacity", [1, 2, 4])
def test_the_limit_comes_down_to_what_a_saturated_agent_serves(capacity: int) -> None:
    limiter = GradientLimiter(16)
    assert limiter.limit == 16, "it starts from max_concurrency"
    trace = drive(limiter, Agent(capacity, service_s=2.0), start=0.0, until=900.0)
    settled = [limit for at, limit, _ in trace if at > 300]
    # Latency tolerance 2 allows about the capacity again in flight: the queue inside the agent
    # stays about as long as what it serves at once, instead of growing to 16 - capacity.
    mean = sum(settled) / len(settled)
    assert capacity * 0.9 <= mean <= 2 * capacity + 1, (capacity, mean)
    assert max(settled) <= 2.5 * capacity + 1, (capacity, max(settled))
    assert limiter.baseline_s == pytest.approx(2.0, rel=0.15), "the baseline is the latency without a queue"


def test_the_limit_goes_back_up_when_the_agent_keeps_up_again() -> None:
    limiter = GradientLimiter(16)
    agent = Agent(1, service_s=1.0)
    drive(limiter, agent, 0.0, 600.0)
    assert limiter.limit <= 3
    agent.resize(12, 600.0)
    trace = drive(limiter, agent, 600.0, 1500.0)
    assert max(limit for at, limit, _ in trace if at > 1000) >= 12, "recovered to (about) the new capacity"


def test_overload_errors_cut_the_limit_once_per_round_trip() -> None:
    limiter = GradientLimiter(16, state=LimiterState(estimate=16.0, baseline_s=1.0, next_probe_at=10_000.0))
    # Eight requests sent together all fail: one cut, not eight.
    for _ in range(8):
        limiter.on_overload(sent_at=100.0, now=101.0)
    assert limiter.limit == 12
    limiter.on_overload(sent_at=101.5, now=102.5)  # sent after the cut: it cuts again
    assert limiter.limit == 9
    trace = drive(limiter, Agent(16, service_s=1.0), 103.0, 400.0, error_every=3)
    assert trace[-1][1] <= 4, "a third of the answers being 503s keeps it low"


def test_an_idle_agent_does_not_grow_the_limit_it_does_not_use() -> None:
    limiter = GradientLimiter(16, state=LimiterState(estimate=4.0, baseline_s=1.0, next_probe_at=10_000.0))
    for i in range(50):
        limiter.on_answer(1.0, in_flight=1, sent_at=float(i), now=float(i) + 1)
    assert limiter.limit == 4


def test_the_baseline_is_measured_again_one_request_at_a_time() -> None:
    limiter = GradientLimiter(8, LimiterSettings(probe_every_s=60.0), LimiterState(estimate=6.0, baseline_s=1.0, next_probe_at=50.0))
    limiter.on_answer(1.0, in_flight=6, sent_at=49.0, now=50.0)
    assert limiter.probing and limiter.limit == 1 and limiter.state.to_json()["probing"], "shown while it lasts"
    limiter.on_answer(9.0, in_flight=6, sent_at=45.0, now=54.0)  # sent before the probe: not a sample
    for n in range(3):
        limiter.on_answer(2.0, in_flight=1, sent_at=55.0 + 2 * n, now=57.0 + 2 * n)
    assert not limiter.probing and limiter.baseline_s == 2.0 and not limiter.state.probing
    assert limiter.limit == 5, "the 9 s answer that arrived during the probe is judged against the new baseline"
    assert limiter.state.next_probe_at == pytest.approx(61.0 + 60.0)


def test_answers_sent_before_a_probe_are_judged_as_they_would_have_been_without_it() -> None:
    """Beside another client's 10 s queue the line says one request of ours waits ~10 s (no more
    than the 11 s baseline, so the probe goes ahead). The probe then catches a lull (4-5 s
    alone); the burst of 12 s answers sent before it, with 10 of ours in flight, is judged
    against the line's 10 s, not the lull's 4.5 s."""
    limiter = GradientLimiter(10, state=LimiterState(estimate=10.0, baseline_s=11.0, next_probe_at=21.0))
    for count in range(1, 12):
        n = count % 10 + 1
        limiter.on_answer(10.0 + 0.1 * n, in_flight=n, sent_at=float(count), now=float(count) + 10)
    assert limiter.probing and limiter.solo_s == pytest.approx(10.1, abs=0.3) and limiter.limit == 1
    for _ in range(5):
        limiter.on_answer(12.0, in_flight=10, sent_at=10.0, now=22.0)
    for latency, sent in ((4.0, 22.0), (4.5, 26.0), (5.0, 30.5)):
        limiter.on_answer(latency, in_flight=1, sent_at=sent, now=sent + latency)
    assert not limiter.probing and limiter.baseline_s == 4.5
    assert limiter.limit == 10, "12 s is within twice the 10 s the line saw when they left"


def test_a_probe_ends_at_its_first_answer_when_draining_changed_nothing() -> None:
    """An agent slow with others' queue (5 s answers behind a gateway's own cron jobs): our burst
    of 4 answered in 10-40 s, and one request alone still takes 22 s. Two more answers one at a
    time (~45 s at a limit of 1) could not make the burst's answers look like our queue."""
    limiter = GradientLimiter(4, state=LimiterState(estimate=4.0, baseline_s=5.0, next_probe_at=0.0))
    limiter.on_answer(10.0, in_flight=1, sent_at=0.0, now=10.0)
    assert limiter.probing
    for n, latency in ((2, 20.0), (3, 30.0), (4, 40.0)):
        limiter.on_answer(latency, in_flight=n, sent_at=0.0, now=latency)
    limiter.on_answer(22.0, in_flight=1, sent_at=40.0, now=62.0)
    assert not limiter.probing and limiter.baseline_s == 22.0
    assert limiter.limit == 4, "the burst's answers were within the tolerance of one alone"


def test_a_probe_goes_on_when_draining_made_the_agent_faster() -> None:
    """Our own queue: 8 in flight took 8 s, one alone 1 s. The baseline needs all three answers."""
    limiter = GradientLimiter(8, state=LimiterState(estimate=8.0, baseline_s=1.0, next_probe_at=0.0))
    limiter.on_answer(8.0, in_flight=8, sent_at=0.0, now=8.0)
    limiter.on_answer(8.1, in_flight=7, sent_at=0.0, now=8.1)
    limiter.on_answer(1.0, in_flight=1, sent_at=9.0, now=10.0)
    assert limiter.probing, "one answer alone much faster than the burst's: keep measuring"
    limiter.on_answer(1.2, in_flight=1, sent_at=10.0, now=11.2)
    limiter.on_answer(0.9, in_flight=1, sent_at=11.2, now=12.1)
    assert not limiter.probing and limiter.baseline_s == 1.0
    assert limiter.limit < 8, "the burst's 8 s answers are judged as our queue"


def test_restored_state_is_clamped_to_the_agents_bounds() -> None:
    state = LimiterState.from_json(LimiterState(estimate=40.0, baseline_s=0.5, recent_s=0.7, samples=9).to_json())
    limiter = GradientLimiter(8, state=state)
    assert limiter.limit == 8 and limiter.baseline_s == 0.5 and limiter.recent_s == 0.7


def test_the_answers_the_line_is_fitted_through_carry_over_to_the_next_run() -> None:
    """Window runs are a minute long: the next run continues the fit instead of starting it again."""
    first = GradientLimiter(10, state=LimiterState(estimate=6.0, baseline_s=1.0, next_probe_at=1e9))
    for i in range(40):
        first.on_answer(10.0 + (i % 8 + 1), in_flight=i % 8 + 1, sent_at=float(i), now=float(i) + 12)
    saved = LimiterState.from_json(json.loads(json.dumps(first.state.to_json())))
    assert len(saved.answers) == 30, "the fit window, not every answer"
    saved.estimate = 6.0
    second = GradientLimiter(10, state=saved)
    assert second.solo_s == pytest.approx(11.0, rel=0.05)
    second.on_answer(18.0, in_flight=8, sent_at=100.0, now=118.0)
    assert second.state.estimate == pytest.approx(6.8, abs=0.05), "20% of the way to its maximum of 10 along the carried-over line (+1 per round trip: 6.17)"


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [(None, "ok"), (FailureKind.RATE_LIMITED, "overload"), (FailureKind.SERVER_ERROR, "overload"), (FailureKind.TIMEOUT, "overload"),
     (FailureKind.CLIENT_ERROR, "ignore"), (FailureKind.MALFORMED, "ignore"), (FailureKind.CONNECTION, "ignore")],
)
def test_what_an_answer_says_about_capacity(kind: FailureKind | None, outcome: str) -> None:
    assert outcome_of(kind) == outcome


def test_the_gate_grants_by_rank_within_the_limit_and_counts_other_runs() -> None:
    async def scenario() -> None:
        clock = ManualClock(1000.0)
        gate = ConcurrencyGate(GradientLimiter(2, state=LimiterState(estimate=2.0, baseline_s=1.0, next_probe_at=1e9)), clock)
        first, second = gate.try_acquire(), gate.try_acquire()
        assert first is not None and second is not None and gate.try_acquire() is None
        order: list[str] = []

        async def wait(name: str, rank: tuple) -> None:
            permit = await gate.acquire(rank)
            order.append(name)
            gate.release(permit)

        waiters = [asyncio.create_task(wait(n, r)) for n, r in [("late", (0, 30.0)), ("urgent", (-5, 50.0)), ("early", (0, 10.0))]]
        cancelled = asyncio.create_task(wait("cancelled", (-9, 0.0)))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert gate.queued == 3
        gate.elsewhere = 1  # another run has one in flight: releasing one of ours frees nothing
        gate.release(first)
        await asyncio.sleep(0)
        assert order == [] and gate.in_flight == 1
        gate.elsewhere = 0
        gate.wake()
        gate.release(second)
        await asyncio.gather(*waiters)
        assert order == ["urgent", "early", "late"]
        assert gate.in_flight == 0 and gate.queued == 0

    asyncio.run(scenario())


def test_the_agents_view_shows_the_latency_of_one_request_beside_others_queue() -> None:
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
    state = LimiterState(estimate=10.0, baseline_s=1.2, solo_s=11.4).to_json()
    view = AgentLoad(agent="claw", holder="run-1", limit=10, max_limit=10, in_flight=9, queued=0, updated_at=now,
                     latency_ms=19_800.0, baseline_ms=1_200.0, state=state)
    summary = summarize([view], now)["claw"]
    assert summary.solo_ms == pytest.approx(11_400.0)
    assert "one request of ours beside other clients' queue 11.4 s" in summary.describe()
    assert load_metadata(summary)["solo_latency_ms"].value == pytest.approx(11_400.0)
    alone = summarize([AgentLoad(agent="claw", holder="run-1", limit=2, max_limit=10, in_flight=2, queued=3, updated_at=now)], now)
    assert alone["claw"].solo_ms is None and "beside" not in alone["claw"].describe()


def test_a_limit_of_one_while_the_baseline_is_measured_says_so() -> None:
    """A fresh agent's limit reads 1 of its max for its first few answers: the UI and the CLI say why."""
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
    limiter = GradientLimiter(4)
    limiter.on_answer(0.3, in_flight=1, sent_at=0.0, now=0.3)
    view = AgentLoad(agent="claw", holder="run-1", limit=limiter.limit, max_limit=4, in_flight=0, queued=0, updated_at=now,
                     state=limiter.state.to_json())
    summary = summarize([view], now)["claw"]
    assert summary.limit == 1 and summary.measuring_baseline
    assert "limit 1 (max 4; measuring its latency one request at a time)" in summary.describe()
    assert load_metadata(summary)["measuring_baseline"].value is True
    assert _load_columns(summary, 4)[0] == "1/4 (measuring)"


def test_a_probe_a_window_run_began_is_ended_by_the_run_that_takes_over() -> None:
    """Answers of 25 s behind a gateway's own cron, window runs of a minute: three answers one at
    a time outlast the run that began the probe. The next run goes on with it instead of
    beginning it again (which every run did, and the limit stayed at 1 for good)."""
    first = GradientLimiter(4)
    first.on_answer(25.0, in_flight=1, sent_at=0.0, now=25.0)  # the first answer: the probe begins
    first.on_answer(25.0, in_flight=1, sent_at=25.0, now=50.0)
    assert first.probing and first.state.probe == [25.0]
    second = GradientLimiter(4, state=LimiterState.from_json(json.loads(json.dumps(first.state.to_json()))))
    assert second.probing and second.limit == 1, "it goes on measuring"
    second.on_answer(24.0, in_flight=1, sent_at=60.0, now=84.0)
    second.on_answer(26.0, in_flight=1, sent_at=84.0, now=110.0)
    assert not second.probing and second.baseline_s == 25.0 and second.limit == 4


def test_the_running_sums_give_the_line_of_the_window() -> None:
    """The line is kept in O(1) per answer (a batch reads thousands a second); after many answers
    come and go it is still the least-squares line of the answers in the window."""
    limiter = GradientLimiter(16, state=LimiterState(estimate=16.0, baseline_s=0.05, next_probe_at=1e12))
    rng = random.Random(7)
    for i in range(25_000):
        n = rng.randint(1, 16)
        limiter.on_answer(0.05 + 0.01 * n + rng.random() * 0.02, n, i * 0.001, i * 0.001 + 0.06)
    kept, exact = limiter._line, fit_latency_line(list(limiter.state.answers), limiter.settings)
    assert kept is not None and exact is not None
    assert kept.solo_s == pytest.approx(exact.solo_s, rel=1e-9) and kept.slope_s == pytest.approx(exact.slope_s, rel=1e-9)
