"""Time, passed in: the dispatcher, the scheduler and rate limiters ask a `Clock`, never `time`.

`SystemClock` is the real one. `ManualClock` is a virtual clock for tests and simulations: time
moves only when the test advances it, and coroutines sleeping on it wake exactly at their
instant, so a test can say "nothing left before its due time" without measuring wall time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import threading
import time
from typing import Protocol

UTC = dt.timezone.utc


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (UTC)."""

    def now(self) -> dt.datetime:
        """The current time as an aware UTC datetime."""

    async def sleep_until(self, moment: float) -> None:
        """Return at (never before) `moment`, in epoch seconds."""


class SystemClock:
    """Wall time; sleeps on the event loop's monotonic clock, re-aimed at the wall-clock target."""

    def time(self) -> float:
        return time.time()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time(), UTC)

    async def sleep_until(self, moment: float) -> None:
        while True:
            remaining = moment - time.time()
            if remaining <= 0:
                return
            # Long sleeps are cut so that a wall-clock step (NTP) is noticed within a second.
            await asyncio.sleep(min(remaining, 1.0))


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A virtual clock: `advance` moves time and wakes every sleeper whose moment has come.

    Safe to advance from another thread than the one running the sleepers' event loop.
    """

    def __init__(self, start: float | dt.datetime) -> None:
        self._now = start.timestamp() if isinstance(start, dt.datetime) else float(start)
        self._sleepers: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), UTC)

    async def sleep_until(self, moment: float) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if moment <= self._now:
                return
            future: asyncio.Future[None] = loop.create_future()
            heapq.heappush(self._sleepers, (moment, next(self._order), loop, future))
        await future

    def advance(self, seconds: float) -> None:
        self.set(self.time() + seconds)

    def set(self, moment: float) -> None:
        with self._lock:
            self._now = max(self._now, moment)
            due = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers))
        for _moment, _order, loop, future in due:
            loop.call_soon_threadsafe(_wake, future)

    def next_wakeup(self) -> float | None:
        with self._lock:
            return self._sleepers[0][0] if self._sleepers else None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
