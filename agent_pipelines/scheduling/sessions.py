"""One turn at a time per `session: task` conversation, in this process and across processes.

Two executions of one task that overlap (a slow agent, a catch-up beside the live run) would
otherwise send two turns into one conversation at once and interleave its transcript. Within a
process, turns queue on an asyncio lock in arrival order; across processes, a lease row in the
store says whose turn it is. A lease outlives the request's timeout only by a margin, so a
holder that died frees the conversation by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.store import StateStore

#: How often a turn waiting on another process looks again.
POLL_S = 0.05
LEASE_MARGIN_S = 30.0


class TurnGate:
    def __init__(self, store: StateStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def turn(self, session_key: str, holder: str, timeout_s: float) -> AsyncIterator[None]:
        lock = self._locks.setdefault(session_key, asyncio.Lock())
        async with lock:
            while True:
                now = self.clock.now()
                until = now + dt.timedelta(seconds=timeout_s + LEASE_MARGIN_S)
                if await asyncio.to_thread(self.store.take_turn, session_key, holder, until, now):
                    break
                await asyncio.sleep(POLL_S)
            try:
                yield
            finally:
                # Shielded: a cancelled turn must still hand the conversation on.
                await asyncio.shield(asyncio.to_thread(self.store.end_turn, session_key, holder))
