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
with the queue it measures). Each answer's latency against it is the gradient,
`clamp((tolerance * baseline + slack) / latency, 0.5, 1)` (tolerance 2, slack 0.1 s): below 1, requests queue inside the agent and the
limit shrinks toward that share of itself (smoothed); at 1, it grows by one per round trip, as
long as it is used. Overload errors (429, 5xx, timeouts) cut the limit multiplicatively (AIMD),
once per round trip: the answers to requests sent before a cut say nothing new. The limit starts
at the agent's `max_concurrency` and never exceeds it.

`ConcurrencyGate` applies it on one event loop: permits up to the limit (less what other
processes have in flight to the same agent, see `agent_pipelines.scheduling.load`), waiters
served by rank (priority, then due time), FIFO among equals.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import statistics
from collections.abc import Mapping
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
    #: how much of a gradient below 1 one answer applies to the limit
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


@dataclass
class LimiterState:
    """What is kept across runs and processes (see `agent_pipelines.scheduling.load`)."""

    estimate: float
    baseline_s: float | None = None
    recent_s: float | None = None
    samples: int = 0
    next_probe_at: float | None = None  # epoch seconds; None: measure a baseline first

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "baseline_s": self.baseline_s,
            "recent_s": self.recent_s,
            "samples": self.samples,
            "next_probe_at": self.next_probe_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LimiterState:
        return cls(
            estimate=float(data["estimate"]),
            baseline_s=_float_or_none(data.get("baseline_s")),
            recent_s=_float_or_none(data.get("recent_s")),
            samples=int(data.get("samples") or 0),
            next_probe_at=_float_or_none(data.get("next_probe_at")),
        )


class GradientLimiter:
    """The limit of one agent, between `settings.min_limit` and `max_limit`."""

    def __init__(self, max_limit: int, settings: LimiterSettings | None = None, state: LimiterState | None = None) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self.max_limit = max_limit
        self.settings = settings or LimiterSettings()
        self.state = LimiterState(estimate=float(max_limit))
        self._last_cut_at = -math.inf
        self._probe_started_at: float | None = None
        self._probe: list[float] = []
        self._unjudged: list[tuple[float, int]] = []  # answers waiting for the probe's baseline
        if state is not None:
            self.restore(state)

    @property
    def limit(self) -> int:
        if self.probing:
            return self.settings.min_limit
        return max(self.settings.min_limit, min(self.max_limit, int(self.state.estimate)))

    @property
    def probing(self) -> bool:
        return self._probe_started_at is not None

    @property
    def baseline_s(self) -> float | None:
        return self.state.baseline_s

    @property
    def recent_s(self) -> float | None:
        return self.state.recent_s

    def restore(self, state: LimiterState) -> None:
        """Continue from a state another run learned (clamped to this agent's bounds)."""
        estimate = max(float(self.settings.min_limit), min(float(self.max_limit), state.estimate))
        self.state = LimiterState(estimate, state.baseline_s, state.recent_s, state.samples, state.next_probe_at)

    def on_answer(self, latency_s: float, in_flight: int, sent_at: float, now: float) -> None:
        """An answer to a request sent at `sent_at` took `latency_s`; `in_flight` requests (this
        one included) were out when it left."""
        s, state = self.settings, self.state
        latency_s = max(latency_s, 1e-6)
        state.samples += 1
        state.recent_s = _average(state.recent_s, latency_s, state.samples, s.recent_window)
        if self._probe_started_at is not None:
            if sent_at >= self._probe_started_at:
                self._probe.append(latency_s)
            else:
                self._unjudged.append((latency_s, in_flight))
            if len(self._probe) >= s.probe_answers:
                state.baseline_s = statistics.median(self._probe)
                state.next_probe_at = now + s.probe_every_s
                unjudged, self._probe_started_at, self._probe, self._unjudged = self._unjudged, None, [], []
                for latency, when_sent in unjudged:  # what arrived meanwhile, against the new baseline
                    self._adjust(latency, when_sent)
            return
        if state.baseline_s is None or state.next_probe_at is None or now >= state.next_probe_at:
            self._probe_started_at, self._probe, self._unjudged = now, [], [(latency_s, in_flight)]
            return
        self._adjust(latency_s, in_flight)

    def _adjust(self, latency_s: float, in_flight: int) -> None:
        s, state = self.settings, self.state
        assert state.baseline_s is not None
        if in_flight < state.estimate / 2:
            return  # not using the limit: the answer says nothing about a bigger one
        gradient = max(0.5, min(1.0, (s.tolerance * state.baseline_s + s.slack_s) / latency_s))
        if gradient < 1.0:
            state.estimate = self._clamp(state.estimate * (1 - s.smoothing * (1 - gradient)))
        else:
            state.estimate = self._clamp(state.estimate + 1.0 / state.estimate)  # +1 per round trip

    def on_overload(self, sent_at: float, now: float) -> bool:
        """An overload error answered a request sent at `sent_at`: cut the limit, unless it was
        already cut after that request left (one cut per round trip). True when it was cut."""
        if sent_at < self._last_cut_at:
            return False
        self.state.estimate = self._clamp(self.state.estimate * self.settings.backoff)
        self._last_cut_at = now
        return True

    def _clamp(self, value: float) -> float:
        return max(float(self.settings.min_limit), min(float(self.max_limit), value))


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
