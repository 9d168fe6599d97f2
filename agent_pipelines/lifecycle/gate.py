"""The dispatcher's side of the lifecycle: a request goes to a managed agent only once it is ready.

Scheduled work normally finds its agent ready (the controller woke it `lead` ahead). Work that
finds it asleep (an event, a run-now, a wake that came late) wakes it on the spot, is recorded as
a `cold` start, and waits for the agent's ready check, at most `ready.timeout`; then the
execution fails clearly as `agent not ready`. One waiter per agent: concurrent executions share it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.lifecycle.controller import DRAINING, LifecycleController, managed_agents
from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.store import StateStore
from agent_pipelines.store.lifecycle import READY, WAKING, LifecycleState

REFRESH_S = 1.0


class LifecycleGate:
    def __init__(self, catalog: Catalog, store: StateStore, clock: Clock, log: logging.Logger | Any, controller: LifecycleController | None = None) -> None:
        self.specs = managed_agents(catalog)
        self.store = store
        self.clock = clock
        self.log = log
        self.controller = controller or (LifecycleController(catalog, store, clock) if self.specs else None)
        self._known: dict[str, LifecycleState] = {}
        self._refreshed_at = float("-inf")
        self._waiters: dict[str, asyncio.Task[str | None]] = {}

    def refresh(self, force: bool = False) -> None:
        """Re-read the agents' states (blocking: call from a worker thread)."""
        if not self.specs:
            return
        now = self.clock.time()
        if force or now - self._refreshed_at >= REFRESH_S:
            self._known = self.store.lifecycle_states()
            self._refreshed_at = now

    async def admit(self, agent: str, task: str) -> str | None:
        """None once `agent` may be called; otherwise why the execution cannot be sent."""
        if agent not in self.specs:
            return None
        known = self._known.get(agent)
        if known is not None and known.state == READY:
            return None
        waiter = self._waiters.get(agent)
        if waiter is None or waiter.done():
            waiter = asyncio.ensure_future(self._wait_ready(agent, task))
            self._waiters[agent] = waiter
        return await asyncio.shield(waiter)

    async def _wait_ready(self, agent: str, task: str) -> str | None:
        assert self.controller is not None
        spec = self.specs[agent]
        deadline = self.clock.time() + spec.ready.timeout
        woke = False
        while True:
            state = (await asyncio.to_thread(self.store.lifecycle_states)).get(agent)
            current = state.state if state is not None else "asleep"
            if current == READY:
                break
            if current == WAKING:
                if await asyncio.to_thread(self.controller.ready_check, agent):
                    await asyncio.to_thread(self.controller.mark_ready, agent)
                    break
            elif current != DRAINING and not woke:
                why = f"{task} found it {current}: woken on demand"
                await asyncio.to_thread(self.store.record_lifecycle_event, agent, "cold", None, why)
                await asyncio.to_thread(self.controller.wake_now, agent, why)
                woke = True
                self.log.warning(f"agent {agent}: {why}")
                continue
            if self.clock.time() >= deadline:
                return f"agent not ready: {agent} was {current} and not ready {spec.ready.timeout:g} s after work came for it"
            await self.clock.sleep_until(self.clock.time() + spec.ready.every)
        self._known[agent] = LifecycleState(agent, READY, self.clock.now())
        return None
