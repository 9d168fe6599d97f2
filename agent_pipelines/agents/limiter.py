"""How many requests an agent can take at once, learned from its latency and errors.

An agent that cannot keep up does not refuse work: it queues it inside (an OpenClaw gateway's
lanes, a model server's batch queue), where nobody sees it, timeouts fire and work is lost. So
the platform keeps its own limit per agent and per fleet node, and what is beyond it waits in
the platform's queue (`agent_pipelines.scheduling.admission`), where it is ordered, has a
deadline and is visible.

`GradientLimiter` is the algorithm, a pure function of its samples and the times it is told:
the gradient limiter of Envoy's adaptive concurrency filter and Netflix concurrency-limits'
Gradient2. A *baseline* is the agent's latency without a queue of ours: measured, as Envoy
measures its minimum RTT, by sending one request at a time for a few answers, when the limiter
starts and then every 5 minutes (the baseline of a long overload would otherwise creep up
with the queue it measures). A request that leaves with none of ours ahead of it measures the
same without a drain: the median of the latest three such answers is the baseline too, and
puts the next probe off. Each answer's latency against it is the gradient,
`clamp((tolerance * baseline + slack) / latency, 0.5, 1)` (tolerance 2, slack 0.1 s): below 1, requests queue inside the agent and the
limit shrinks toward that share of itself (smoothed); at 1, it grows by one per round trip, as
long as it is used.

The limit is for the queue *we* cause. An agent shared with clients that never back off (a
gateway's own cron jobs, other services) is slow because of their queue too, and shrinking for
a queue we cannot remove only hands them our share (a delay-based TCP Vegas flow beside a loss-based
Reno one). So between probes the limiter also fits each answer's latency against how many of
our requests were in flight when it left (least squares over the recent answers): the slope is
what one more request of ours costs, and the line at one request, `solo_s`, is the latency a
request of ours alone would have under the others' load now. The baseline is the higher of the
probe's and `solo_s`; the slope is taken one standard error steep, so a noisy fit leans towards
the probe's baseline; while the line's `solo_s` is above the baseline, a probe would only
measure the others' queue at the cost of a drain, and waits. Overload errors (429, 5xx,
timeouts) cut the limit multiplicatively (AIMD), once per round trip: the answers to requests
sent before a cut say nothing new. The limit starts at the agent's `max_concurrency` and never
exceeds it.

`ConcurrencyGate` applies it on one event loop: permits up to the limit (less what other
processes have in flight to the same agent, see `agent_pipelines.scheduling.load`), waiters
served by rank (priority, then due time), FIFO among equals.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_pipelines.agents.base import FailureKind
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock

#: Failures that say the agent is overloaded: the limit is cut.
OVERLOAD_KINDS = frozenset({FailureKind.RATE_LIMITED, FailureKind.SERVER_ERROR, FailureKind.TIMEOUT})

Outcome = Literal["ok", "overload", "ignore"]


def outcome_of(kind: FailureKind | None) -> Outcome:
    """What an answer says about the agent's capacity (`None`: it answered)."""
    if kind is None:
        return "ok"
    return "overload" if kind in OVERLOAD_KINDS else "ignore"


@dataclass(frozen=True)
class LimiterSettings:
    """The limiter's parameters; the defaults suit LLM agents (seconds per answer, few per second)."""

    #: latency up to this multiple of the baseline is not queueing (answers vary by prompt, and an
    #: agent's answer taking twice as long is a fair price for keeping it busy)
    tolerance: float = 2.0
    #: ...plus this much: a busy client's own event loop adds milliseconds to every answer it
    #: reads (a batch sending thousands a second), which is not the agent queueing; negligible
    #: against an LLM agent's seconds, it keeps a fast agent's limit from shrinking to nothing
    slack_s: float = 0.1
    #: how much of a gradient below 1 (or of the way to the fitted line's room) one answer applies
    smoothing: float = 0.2
    #: answers to requests sent one at a time that make a baseline (their median)
    probe_answers: int = 3
    #: how often the baseline is measured again (a probe costs a few answers at concurrency 1)
    probe_every_s: float = 300.0
    #: answers averaged into the recent latency that is shown (not used by the algorithm)
    recent_window: int = 5
    #: what an overload error leaves of the limit
    backoff: float = 0.75
    min_limit: int = 1
    #: recent answers whose latency is fitted against our requests in flight (see `solo_s`)
    fit_window: int = 30
    #: a fit needs this many answers...
    fit_min_answers: int = 10
    #: ...sent at in-flight counts this spread out (their standard deviation, in requests)
    fit_min_spread: float = 0.5


@dataclass
class LimiterState:
    """What is kept across runs and processes (see `agent_pipelines.scheduling.load`)."""

    estimate: float
    baseline_s: float | None = None
    recent_s: float | None = None
    samples: int = 0
    next_probe_at: float | None = None  # epoch seconds; None: measure a baseline first
    #: latency of one request of ours beside the others' queue, from the last fitted line (None: none yet)
    solo_s: float | None = None
    #: the recent answers the line is fitted through: (our requests in flight when it left, latency)
    answers: deque[tuple[int, float]] = field(default_factory=deque)
    #: when the probe measuring the baseline began (None: not measuring), and its answers so far:
    #: a run that takes over mid-probe goes on with it (with answers slower than a window run
    #: lasts, every run would otherwise begin the probe again and none would end it)
    probe_started_at: float | None = None
    probe: list[float] = field(default_factory=list)
    #: latencies of the latest answers to requests sent with none of ours ahead of them
    alone: deque[float] = field(default_factory=deque)

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "baseline_s": self.baseline_s,
            "recent_s": self.recent_s,
            "samples": self.samples,
            "next_probe_at": self.next_probe_at,
            "solo_s": self.solo_s,
            "answers": [[n, latency] for n, latency in self.answers],
            "probing": self.probing,
            "probe_started_at": self.probe_started_at,
            "probe": list(self.probe),
            "alone": list(self.alone),
        }

    @property
    def probing(self) -> bool:
        """The limit is 1 for now because the baseline is being measured (shown)."""
        return self.probe_started_at is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LimiterState:
        return cls(
            estimate=float(data["estimate"]),
            baseline_s=_float_or_none(data.get("baseline_s")),
            recent_s=_float_or_none(data.get("recent_s")),
            samples=int(data.get("samples") or 0),
            next_probe_at=_float_or_none(data.get("next_probe_at")),
            solo_s=_float_or_none(data.get("solo_s")),
            answers=deque((int(n), float(latency)) for n, latency in data.get("answers") or ()),
            probe_started_at=_float_or_none(data.get("probe_started_at")),
            probe=[float(latency) for latency in data.get("probe") or ()],
            alone=deque(float(latency) for latency in data.get("alone") or ()),
        )


class GradientLimiter:
    """The limit of one agent, between `settings.min_limit` and `max_limit`."""

    def __init__(self, max_limit: int, settings: LimiterSettings | None = None, state: LimiterState | None = None) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self.max_limit = max_limit
        self.settings = settings or LimiterSettings()
        self.state = LimiterState(
            estimate=float(max_limit), answers=deque(maxlen=self.settings.fit_window), alone=deque(maxlen=self.settings.probe_answers)
        )
        self._last_cut_at = -math.inf
        self._unjudged: list[tuple[float, int]] = []  # answers waiting for the probe's baseline
        self._line: LatencyLine | None = None
        self._moments = Moments()  # of state.answers, kept as answers come and go (the batch path reads thousands a second)
        if state is not None:
            self.restore(state)

    @property
    def limit(self) -> int:
        if self.probing:
            return self.settings.min_limit
        return max(self.settings.min_limit, min(self.max_limit, int(self.state.estimate)))

    @property
    def probing(self) -> bool:
        return self.state.probing

    @property
    def baseline_s(self) -> float | None:
        return self.state.baseline_s

    @property
    def recent_s(self) -> float | None:
        return self.state.recent_s

    @property
    def solo_s(self) -> float | None:
        return self.state.solo_s

    @property
    def reference_s(self) -> float | None:
        """What an answer's latency is judged against: the probe's baseline, or the latency of
        one request of ours under the others' load when that is higher."""
        baseline, solo = self.state.baseline_s, self.state.solo_s
        if baseline is None or solo is None:
            return baseline
        return max(baseline, solo)

    def restore(self, state: LimiterState) -> None:
        """Continue from a state another run learned (clamped to this agent's bounds)."""
        estimate = max(float(self.settings.min_limit), min(float(self.max_limit), state.estimate))
        answers = deque(state.answers, maxlen=self.settings.fit_window)
        alone = deque(state.alone, maxlen=self.settings.probe_answers)
        self.state = dataclasses.replace(state, estimate=estimate, answers=answers, alone=alone, probe=list(state.probe))
        self._moments = Moments.of(answers)
        self._line = self._moments.line(self.settings)

    def on_answer(self, latency_s: float, in_flight: int, sent_at: float, now: float) -> None:
        """An answer to a request sent at `sent_at` took `latency_s`; `in_flight` requests (this
        one included) were out when it left."""
        s, state = self.settings, self.state
        latency_s = max(latency_s, 1e-6)
        state.samples += 1
        state.recent_s = _average(state.recent_s, latency_s, state.samples, s.recent_window)
        if in_flight == 1:
            self._measured_alone(latency_s, now)
        if state.probe_started_at is not None:
            if sent_at >= state.probe_started_at:
                state.probe.append(latency_s)
            else:
                self._unjudged.append((latency_s, in_flight))
            if len(state.probe) >= s.probe_answers or self._draining_changed_nothing():
                self._end_probe(now)
            return
        if state.baseline_s is None or state.next_probe_at is None or now >= state.next_probe_at:
            if self._others_queue_dominates():
                state.next_probe_at = now + s.probe_every_s  # a probe would measure their queue, at the cost of a drain
            else:
                state.probe_started_at, state.probe, self._unjudged = now, [], [(latency_s, in_flight)]
                return
        self._fit(in_flight, latency_s)
        self._adjust(latency_s, in_flight)

    def _measured_alone(self, latency_s: float, now: float) -> None:
        """An answer to a request sent with none of ours ahead of it measured what a probe
        measures (the agent without a queue of ours): the baseline is the median of the latest
        few, so an agent whose other clients' load has grown since the last probe is not judged
        against what it was then, and the next probe, which would drain our requests to get the
        same, is put off."""
        s, state = self.settings, self.state
        state.alone.append(latency_s)
        if state.probe_started_at is None and state.baseline_s is not None and len(state.alone) >= s.probe_answers:
            state.baseline_s = statistics.median(state.alone)
            state.next_probe_at = now + s.probe_every_s

    def _fit(self, in_flight: int, latency_s: float) -> None:
        """Add the answer to the line and refit it (`solo_s` keeps the last line's while none forms)."""
        self._remember(in_flight, latency_s)
        self._line = self._moments.line(self.settings)
        if self._line is not None:
            self.state.solo_s = self._line.solo_s

    def _draining_changed_nothing(self) -> bool:
        """The probe's first answer, one request alone, took about as long as the answers sent
        before the drain with more of ours in flight: it is not our queue that makes the agent
        slow, so more answers one at a time could not make those look like queueing. Each costs
        a full answer at a limit of 1, which is what the probe of an agent slow with others'
        queue (an LLM gateway's own cron jobs) cannot afford: it ends at the first."""
        probe = self.state.probe
        if len(probe) != 1:
            return False
        sent_with_others = [latency for latency, in_flight in self._unjudged if in_flight > 1]
        tolerated = self.settings.tolerance * probe[0] + self.settings.slack_s
        return bool(sent_with_others) and max(sent_with_others) <= tolerated

    def _end_probe(self, now: float) -> None:
        s, state = self.settings, self.state
        state.baseline_s = statistics.median(state.probe)
        state.next_probe_at = now + s.probe_every_s
        # What arrived meanwhile left before the probe: it is judged against the new baseline or
        # what the line said of the others' queue then, whichever is higher, as it would have
        # been without the probe.
        before = max(state.baseline_s, state.solo_s or 0.0)
        # The probe measured one request alone directly: the line starts again from its
        # answers (an old line would keep a queue of others that has since gone).
        self._forget_line()
        for latency in state.probe:
            self._remember(1, latency)
        unjudged, state.probe_started_at, state.probe, self._unjudged = self._unjudged, None, [], []
        for latency, when_sent in unjudged:
            self._adjust(latency, when_sent, reference=before)

    def _others_queue_dominates(self) -> bool:
        """The fitted line says one request of ours alone now waits beyond the baseline: the
        agent is slow with others' queue, which a probe would only measure."""
        baseline = self.state.baseline_s
        return baseline is not None and self._line is not None and self._line.solo_s > baseline

    def _adjust(self, latency_s: float, in_flight: int, reference: float | None = None) -> None:
        s, state = self.settings, self.state
        reference = reference if reference is not None else self.reference_s
        assert reference is not None
        if in_flight < state.estimate / 2:
            return  # not using the limit: the answer says nothing about a bigger one
        tolerated = s.tolerance * reference + s.slack_s
        gradient = max(0.5, min(1.0, tolerated / latency_s))
        if gradient < 1.0:
            state.estimate = self._clamp(state.estimate * (1 - s.smoothing * (1 - gradient)))
            return
        grown = state.estimate + 1.0 / state.estimate  # +1 per round trip
        if self._line is not None:  # ...or towards where the fitted line reaches the tolerance
            room = min(float(self.max_limit), self._line.requests_within(tolerated))
            grown = max(grown, state.estimate + s.smoothing * (room - state.estimate))
        state.estimate = self._clamp(grown)

    def on_overload(self, sent_at: float, now: float) -> bool:
        """An overload error answered a request sent at `sent_at`: cut the limit, unless it was
        already cut after that request left (one cut per round trip). True when it was cut."""
        if sent_at < self._last_cut_at:
            return False
        self.state.estimate = self._clamp(self.state.estimate * self.settings.backoff)
        self._last_cut_at = now
        self._forget_line()  # the line says nothing about errors: no growth along it past one
        return True

    def _remember(self, in_flight: int, latency_s: float) -> None:
        answers = self.state.answers
        if len(answers) == answers.maxlen:
            self._moments.remove(*answers[0])
        answers.append((in_flight, latency_s))
        self._moments.add(in_flight, latency_s)
        if self._moments.updates >= REFRESH_MOMENTS_EVERY:  # bound the rounding that adding and removing leaves
            self._moments = Moments.of(answers)

    def _forget_line(self) -> None:
        self.state.answers.clear()
        self._moments = Moments()
        self.state.solo_s, self._line = None, None

    def _clamp(self, value: float) -> float:
        return max(float(self.settings.min_limit), min(float(self.max_limit), value))


@dataclass(frozen=True)
class LatencyLine:
    """Latency against our requests in flight: `solo_s` at one request, `slope_s` per request more."""

    solo_s: float
    slope_s: float

    def requests_within(self, latency_s: float) -> float:
        """How many requests of ours in flight keep the latency within `latency_s`."""
        if self.slope_s <= 0:
            return math.inf
        return 1 + (latency_s - self.solo_s) / self.slope_s


#: answers after which the running sums are computed afresh from the window
REFRESH_MOMENTS_EVERY = 10_000


@dataclass
class Moments:
    """Running sums over (requests in flight, latency) pairs: a least-squares line in O(1) per answer."""

    count: int = 0
    n: float = 0.0
    latency: float = 0.0
    nn: float = 0.0
    n_latency: float = 0.0
    latency_latency: float = 0.0
    updates: int = 0

    @classmethod
    def of(cls, answers: Iterable[tuple[int, float]]) -> Moments:
        moments = cls()
        for n, latency in answers:
            moments.add(n, latency)
        moments.updates = 0
        return moments

    def add(self, n: int, latency: float, sign: int = 1) -> None:
        self.count += sign
        self.n += sign * n
        self.latency += sign * latency
        self.nn += sign * n * n
        self.n_latency += sign * n * latency
        self.latency_latency += sign * latency * latency
        self.updates += 1

    def remove(self, n: int, latency: float) -> None:
        self.add(n, latency, sign=-1)

    def line(self, settings: LimiterSettings) -> LatencyLine | None:
        """The least-squares line, its slope one standard error steeper (a noisy fit says less
        about the others' load and our room, not more). None while the answers are too few or
        were all sent at about the same in-flight count (nothing to fit a slope to)."""
        count = self.count
        if count < max(3, settings.fit_min_answers):
            return None
        mean_n, mean_latency = self.n / count, self.latency / count
        spread = self.nn - self.n * mean_n
        if spread / count < settings.fit_min_spread**2:
            return None
        covariance = self.n_latency - self.n * mean_latency
        slope = covariance / spread
        residuals = max(0.0, self.latency_latency - self.latency * mean_latency - slope * covariance)
        steep = max(0.0, slope + math.sqrt(residuals / (count - 2) / spread))
        return LatencyLine(solo_s=max(1e-6, mean_latency - steep * (mean_n - 1)), slope_s=steep)


def fit_latency_line(answers: Sequence[tuple[int, float]], settings: LimiterSettings) -> LatencyLine | None:
    """The line through (requests of ours in flight, latency) pairs (see `Moments.line`)."""
    return Moments.of(answers).line(settings)


def others_queue_note(baseline_s: float | None, solo_s: float | None) -> str:
    """How long one request of ours waits beside other clients' queue, when that is beyond the
    baseline (empty otherwise): said wherever the agent's latency is shown."""
    if baseline_s is None or solo_s is None or solo_s <= baseline_s:
        return ""
    return f"one request of ours beside other clients' queue {solo_s:.1f} s"


def _average(current: float | None, sample: float, count: int, window: int) -> float:
    """A plain mean over the first `window` samples, then an exponential moving average."""
    if current is None:
        return sample
    if count <= window:
        return current + (sample - current) / count
    alpha = 2.0 / (window + 1)
    return current * (1 - alpha) + sample * alpha


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(eq=False)
class Permit:
    """The right to have one request in flight; give it back with `ConcurrencyGate.release`."""

    acquired_at: float
    in_flight: int  # requests in flight (in this process and others) once this one was granted
    sent_at: float | None = None
    released: bool = False


@dataclass(order=True)
class _Waiter:
    rank: tuple[Any, ...]
    order: int
    future: asyncio.Future[Permit] = field(compare=False)


class ConcurrencyGate:
    """Requests in flight to one agent from this process, within its learned limit.

    `elsewhere` is what other processes have in flight to the agent (updated from the store every
    second): the limit is the agent's, shared by every run that calls it.
    """

    def __init__(self, limiter: GradientLimiter, clock: Clock = SYSTEM_CLOCK) -> None:
        self.limiter = limiter
        self.clock = clock
        self.in_flight = 0
        self.elsewhere = 0
        self.sent = 0
        self.overloads = 0
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def queued(self) -> int:
        return len(self._waiters)  # granted waiters leave the heap at once, cancelled ones in `_compact`

    def free(self) -> int:
        return max(0, self.limit - self.in_flight - self.elsewhere)

    def try_acquire(self) -> Permit | None:
        """A permit now, if one is free and nobody waits for one."""
        if self.queued or self.free() <= 0:
            return None
        return self._grant()

    async def acquire(self, rank: tuple[Any, ...] = ()) -> Permit:
        """Wait for a permit; lower ranks first, FIFO among equal ranks. Cancellable: a permit
        granted to a waiter cancelled at that moment is given back."""
        permit = self.try_acquire()
        if permit is not None:
            return permit
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(rank, next(self._order), future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())
            else:
                future.cancel()
            self._compact()
            raise

    def release(self, permit: Permit, outcome: Outcome = "ignore", latency_s: float | None = None) -> None:
        """Give a permit back with what its request said about the agent."""
        if permit.released:
            return
        permit.released = True
        self.in_flight -= 1
        if outcome == "ok" and latency_s is not None:
            sent_at = permit.sent_at if permit.sent_at is not None else permit.acquired_at
            self.limiter.on_answer(latency_s, permit.in_flight, sent_at, self.clock.time())
        elif outcome == "overload":
            self.overloads += 1
            self.limiter.on_overload(permit.sent_at if permit.sent_at is not None else permit.acquired_at, self.clock.time())
        self.wake()

    def sending(self, permit: Permit) -> None:
        """The permit's request leaves now."""
        permit.sent_at = self.clock.time()
        self.sent += 1

    def wake(self) -> None:
        """Grant what is free to the first waiters (after a release, or a change of `elsewhere`)."""
        while self._waiters and self.free() > 0:
            waiter = heapq.heappop(self._waiters)
            if not waiter.future.done():
                waiter.future.set_result(self._grant())

    def _grant(self) -> Permit:
        self.in_flight += 1
        return Permit(acquired_at=self.clock.time(), in_flight=self.in_flight + self.elsewhere)

    def _compact(self) -> None:
        if any(w.future.done() for w in self._waiters):
            self._waiters = [w for w in self._waiters if not w.future.done()]
            heapq.heapify(self._waiters)
