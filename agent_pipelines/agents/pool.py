"""Open clients for catalog agents on one event loop: the one place agent clients are built.

Every call site (scheduled and manual executions, batch shards, the judge, the tuner) gets its
connections from an `AgentPool`, so the HTTP library, connection limits and credentials are
decided here and nowhere else. A connection bounds the requests in flight to its agent (or fleet
node) by a limit learned from its latency and errors, at most its `max_concurrency` (see
`limiter`); the token is read when each request is built (see `credentials`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import httpx

from agent_pipelines.agents.base import AgentCallError, AgentClient, AgentRequest, AgentResponse, AgentSettings
from agent_pipelines.agents.credentials import TokenSource
from agent_pipelines.agents.limiter import ConcurrencyGate, GradientLimiter, Outcome, outcome_of
from agent_pipelines.agents.registry import AGENT_CLIENTS, create_client
from agent_pipelines.agents.transport import AiohttpTransport, HttpxTransport, aiohttp_session
from agent_pipelines.catalog.model import AgentSpecBase

#: httpx's async client costs ~10 ms of CPU per request and slows down with big pools, so its
#: pool stays small; aiohttp keeps one connection per slot.
MAX_HTTPX_CONNECTIONS = 16


def settings_for(spec: AgentSpecBase) -> AgentSettings:
    token_source = None
    if spec.auth_env or spec.auth_file:
        token_source = TokenSource(agent=spec.name, env=spec.auth_env, file=spec.auth_file)
    return AgentSettings(
        name=spec.name,
        kind=spec.kind,
        base_url=spec.base_url or "",
        model=spec.model,
        timeout_s=spec.timeout,
        max_concurrency=spec.max_concurrency,
        headers=dict(spec.headers),
        idempotency_header=spec.idempotency_header,
        options=spec.options,
        token_source=token_source,
    )


def replays_history(spec: AgentSpecBase) -> bool:
    """Stateless endpoints get a `task` session's history replayed with every request."""
    return AGENT_CLIENTS[spec.kind].replays_history


class AgentConnection:
    """An open client plus the gate that bounds requests in flight to its agent."""

    def __init__(self, client: AgentClient, max_concurrency: int) -> None:
        self.client = client
        self.gate = ConcurrencyGate(GradientLimiter(max_concurrency))

    async def invoke(self, request: AgentRequest, on_send: Callable[[], None] | None = None) -> AgentResponse:
        """Wait for a permit, send, and tell the limiter what the answer said. `on_send` runs
        once a permit is granted, right before the request leaves (lateness)."""
        permit = await self.gate.acquire()
        outcome: Outcome = "ignore"
        latency_s: float | None = None
        try:
            if on_send is not None:
                on_send()
            self.gate.sending(permit)
            started = self.gate.clock.time()
            try:
                response = await self.client.invoke(request)
            except AgentCallError as error:
                outcome = outcome_of(error.kind)
                raise
            outcome, latency_s = "ok", self.gate.clock.time() - started
            return response
        finally:
            self.gate.release(permit, outcome, latency_s)


class AgentPool:
    """Clients for the given agents, opened lazily on the running loop, closed on exit."""

    def __init__(self, specs: Mapping[str, AgentSpecBase]) -> None:
        self.specs = dict(specs)
        self._connections: dict[str, AgentConnection | AgentCallError] = {}
        self._closers: list[Any] = []

    async def __aenter__(self) -> AgentPool:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
        self._connections.clear()

    def connection(self, name: str) -> AgentConnection:
        """The agent's connection; raises `AgentCallError(CONFIG)` when it cannot be built."""
        found = self._connections.get(name)
        if found is None:
            try:
                found = self._open(self.specs[name])
            except AgentCallError as error:
                found = error
            self._connections[name] = found
        if isinstance(found, AgentCallError):
            raise found
        return found

    async def probe(self, name: str, timeout_s: float = 5.0) -> AgentCallError | None:
        """None when the agent is reachable and accepts our credentials, else why not."""
        try:
            await self.connection(name).client.probe(timeout_s)
        except AgentCallError as error:
            return error
        return None

    def _open(self, spec: AgentSpecBase) -> AgentConnection:
        settings = settings_for(spec)
        if spec.http_client == "httpx":
            pool = min(spec.max_concurrency, MAX_HTTPX_CONNECTIONS)
            limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
            client = httpx.AsyncClient(limits=limits, timeout=spec.timeout)
            self._closers.append(client.aclose)
            transport: Any = HttpxTransport(client)
        else:
            connector = aiohttp.TCPConnector(limit=spec.max_concurrency, limit_per_host=spec.max_concurrency)
            session = aiohttp_session(connector)
            self._closers.append(session.close)
            transport = AiohttpTransport(session)
        return AgentConnection(create_client(settings, transport), spec.max_concurrency)
