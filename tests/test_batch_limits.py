"""Rate limits per node: requests per minute, tokens per minute, pauses after a 429."""

from __future__ import annotations

import asyncio
import time

from agent_pipelines.batch.limits import RateLimiter
from agent_pipelines.catalog.model import RateLimitSpec


def _timed_acquires(limiter: RateLimiter, count: int) -> list[float]:
    async def main() -> list[float]:
        started = time.monotonic()
        stamps = []
        for _ in range(count):
            await limiter.acquire()
            stamps.append(time.monotonic() - started)
        return stamps

    return asyncio.run(main())


def test_requests_per_minute_allows_a_burst_then_paces() -> None:
    limiter = RateLimiter(RateLimitSpec(requests_per_minute=600))  # 10 per second
    stamps = _timed_acquires(limiter, 605)
    assert stamps[599] < 0.2, "a minute's worth is available at once"
    assert 0.4 <= stamps[604] <= 0.8, "then one every 100 ms"


def test_tokens_per_minute_waits_for_a_positive_balance() -> None:
    limiter = RateLimiter(RateLimitSpec(tokens_per_minute=6000))  # 100 tokens per second
    _timed_acquires(limiter, 1)
    limiter.spent_tokens(6050)  # one big answer overdraws the bucket by 50 tokens
    (waited,) = _timed_acquires(limiter, 1)
    assert 0.4 <= waited <= 0.8


def test_a_429_pauses_the_node() -> None:
    limiter = RateLimiter(None)
    limiter.pause(0.3)
    (waited,) = _timed_acquires(limiter, 1)
    assert 0.28 <= waited <= 0.5
    assert _timed_acquires(limiter, 1)[0] < 0.05, "no limit configured: no wait"
