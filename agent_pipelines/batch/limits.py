"""Per-node rate limits: requests and tokens per minute, and the pause a 429 asks for."""

from __future__ import annotations

import asyncio

from agent_pipelines.catalog.model import RateLimitSpec
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock


class TokenBucket:
    """`rate_per_minute` units refilled continuously, at most one minute's worth banked."""

    def __init__(self, rate_per_minute: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.capacity = float(rate_per_minute)
        self.per_second = rate_per_minute / 60.0
        self.level = self.capacity
        self.updated = clock.time()

    def _refill(self) -> None:
        now = self.clock.time()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_second)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is)."""
        self._refill()
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.per_second

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount  # may go negative: tokens are only known after the answer


class RateLimiter:
    """What one agent node accepts; shared by every shard that sends to it."""

    def __init__(self, spec: RateLimitSpec | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.requests = TokenBucket(spec.requests_per_minute, clock) if spec and spec.requests_per_minute else None
        self.tokens = TokenBucket(spec.tokens_per_minute, clock) if spec and spec.tokens_per_minute else None
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a request slot, a positive token balance and the end of any 429 pause."""
        if self.requests is None and self.tokens is None and self.paused_until <= self.clock.time():
            return  # nothing to wait for: no lock on the hot path
        async with self._lock:
            while True:
                now = self.clock.time()
                wait = max(0.0, self.paused_until - now)
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_for(1))
                if self.tokens is not None:
                    wait = max(wait, self.tokens.wait_for(0))
                if wait <= 1e-6:  # float dust from the refill arithmetic
                    break
                await self.clock.sleep_until(now + wait)
            if self.requests is not None:
                self.requests.take(1)

    def spent_tokens(self, count: int) -> None:
        if self.tokens is not None and count:
            self.tokens.take(count)

    def pause(self, seconds: float) -> None:
        """A 429 with Retry-After: nobody sends to this node before then."""
        self.paused_until = max(self.paused_until, self.clock.time() + seconds)
