"""The `sending` mark, written before a request leaves, for many requests in one statement.

An execution whose row still says `claimed` when its run dies was provably never sent; one that
says `sending` may have reached the agent. So the mark must be durable before the request
leaves, yet a burst of due executions must not pay one database round trip each: marks asked
for in the same moment go to the recorder together, which writes them in order with the
outcomes recorded before (so a retry's mark never overtakes its previous attempt's record).
"""

from __future__ import annotations

import asyncio

from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.scheduling.recorder import Recorder


class AttemptMarker:
    def __init__(self, recorder: Recorder, clock: Clock) -> None:
        self.recorder = recorder
        self.clock = clock
        self._waiting: dict[str, asyncio.Future[int | None]] = {}

    async def mark(self, key: str) -> int | None:
        """The attempt number once `key` is durably `sending`; None when it is not this run's
        to send (another run or the misfire reconciler holds it now)."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush)
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = loop.create_future()
        return await asyncio.shield(future)

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, {}
        written = asyncio.wrap_future(self.recorder.mark_sending(list(batch), self.clock.now()))

        def resolve(done: asyncio.Future[dict[str, int]]) -> None:
            for key, future in batch.items():
                if future.done():
                    continue
                if done.exception() is not None:
                    future.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    future.set_result(done.result().get(key))

        written.add_done_callback(resolve)
