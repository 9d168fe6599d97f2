"""Rate limits per node: requests per minute, tokens per minute, pauses after a 429 (on a
virtual clock that jumps to each wake-up, so the pacing is exact and no wall time is measured)."""

from __future__ import annotations

import asyncio

from agent_pipelines.batch.limits import RateLimiter
from agent_pipelines.catalog.model import RateLimitSpec


class JumpingClock:
    """Time stands still until someone sleeps; a sleeper wakes exactly at its moment."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    async def sleep_until(self, moment: float) -> None:
        self.now = max(self.now, moment)


def _acquires(limiter: RateLimiter, clock: JumpingClock, count: int) -> list[float]:
    async def main() -> list[float]:
        started = clock.time()
        stamps = []
        for _ in range(count):
            await limiter.acquire()
            stamps.append(round(clock.time() - started, 6))
        return stamps

    return asyncio.run(main())


def test_requests_per_minute_allows_a_burst_then_paces() -> None:
    clock = JumpingClock()
    limiter = RateLimiter(RateLimitSpec(requests_per_minute=600), clock)  # 10 per second
    stamps = _acquires(limiter, clock, 605)
    assert stamps[599] == 0.0, "a minute's worth is available at once"
    assert stamps[600:] == [0.1, 0.2, 0.3, 0.4, 0.5], "then one every 100 ms"


def test_tokens_per_minute_waits_for_a_positive_balance() -> None:
    clock = JumpingClock()
    limiter = RateLimiter(RateLimitSpec(tokens_per_minute=6000), clock)  # 100 tokens per second
    _acquires(limiter, clock, 1)
    limiter.spent_tokens(6050)  # one big answer overdraws the bucket by 50 tokens
    assert _acquires(limiter, clock, 1) == [0.5]


def test_a_429_pauses_the_node() -> None:
    clock = JumpingClock()
    limiter = RateLimiter(None, clock)
    limiter.pause(0.3)
    assert _acquires(limiter, clock, 1) == [0.3]
    assert _acquires(limiter, clock, 1) == [0.0], "no limit configured: no wait"
