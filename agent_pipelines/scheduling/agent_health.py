"""Agents that keep failing are left alone: their executions are skipped with the reason, and the
agent is probed with back-off until it answers again.

Only failures that say the agent itself is unusable count (refused connections, refused
credentials); a bad answer to one prompt does not. The state is in the store, so every run and
the UI agree on it; each run refreshes its copy every second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent_pipelines.agents.base import AGENT_DOWN_KINDS, AgentCallError
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import Clock
from agent_pipelines.store import AgentHealth, StateStore

REFRESH_S = 1.0


class HealthGate:
    def __init__(
        self,
        catalog: Catalog,
        store: StateStore,
        clock: Clock,
        log: logging.Logger | Any,
        on_change: Callable[[AgentHealth], None] = lambda _health: None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock
        self.log = log
        self.on_change = on_change
        self._known: dict[str, AgentHealth] = {}
        self._refreshed_at = float("-inf")

    def refresh(self, force: bool = False) -> None:
        """Re-read the agents' state (blocking: call from a worker thread)."""
        now = self.clock.time()
        if force or now - self._refreshed_at >= REFRESH_S:
            self._known = self.store.agent_health()
            self._refreshed_at = now

    def unhealthy(self, agent: str) -> AgentHealth | None:
        health = self._known.get(agent)
        return health if health is not None and not health.healthy else None

    async def admit(self, agent: str, pool: AgentPool) -> str | None:
        """None when requests may go to `agent`; otherwise why its executions are skipped.

        An unhealthy agent whose probe is due is probed first (one prober across all runs)."""
        health = self.unhealthy(agent)
        if health is None:
            return None
        now = self.clock.now()
        spec = self.catalog.agents[agent].health
        if health.next_probe_at is not None and health.next_probe_at <= now:
            if await asyncio.to_thread(self.store.claim_probe, agent, now, spec.max_probe_every):
                error = await pool.probe(agent)
                if error is None:
                    await asyncio.to_thread(self._recovered, agent)
                    return None
                self.log.warning(f"agent {agent} is still unhealthy: probe failed: {error.describe()}")
                await asyncio.to_thread(self.refresh, True)
                health = self.unhealthy(agent) or health
        since = health.unhealthy_since.isoformat(timespec="seconds") if health.unhealthy_since else "?"
        upcoming = health.next_probe_at.isoformat(timespec="seconds") if health.next_probe_at else "?"
        return (
            f"agent {agent} is unhealthy since {since} after {health.consecutive_failures} failed requests "
            f"({health.last_error}); it is probed with back-off (next probe {upcoming}) and used again once it answers"
        )

    def observe(self, agent: str, error: AgentCallError | None) -> None:
        """After an attempt (blocking: runs in the recorder's thread)."""
        if error is not None and error.kind in AGENT_DOWN_KINDS:
            spec = self.catalog.agents[agent].health
            before = self._known.get(agent)
            health = self.store.record_agent_failure(
                agent, error.describe(), threshold=spec.unhealthy_after, first_probe_s=spec.probe_every, now=self.clock.now()
            )
            self._known[agent] = health
            if not health.healthy and (before is None or before.healthy):
                self.log.warning(f"agent {agent} marked unhealthy: {error.describe()}")
                self.on_change(health)
            return
        if error is None:
            known = self._known.get(agent)
            if known is not None and (known.consecutive_failures > 0 or not known.healthy):
                self._recovered(agent)

    def _recovered(self, agent: str) -> None:
        if self.store.record_agent_success(agent):
            self.log.info(f"agent {agent} answers again: healthy")
        self.refresh(force=True)
        health = self._known.get(agent) or AgentHealth(agent, True, 0, None, None, None, None)
        self.on_change(health)
