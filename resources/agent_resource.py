"""A catalog agent as a Dagster resource: visible in the UI, one HTTP client per step."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import dagster as dg
import httpx

from agent_pipelines.catalog.model import AgentSpec
from resources.agents.base import (
    AgentCallError,
    AgentClient,
    AgentRequest,
    AgentResponse,
    AgentSettings,
    FailureKind,
)
from resources.agents.registry import create_client
from resources.agents.transport import AiohttpTransport, HttpxTransport

#: httpx's async client costs ~10 ms of CPU per request and slows down with big pools, so its
#: pool stays small (see ../shared/DAGSTER_NOTES.md); aiohttp keeps one connection per slot.
MAX_HTTPX_CONNECTIONS = 16


def agent_resource_key(agent_name: str) -> str:
    return f"agent_{agent_name}"


class AgentConnection:
    """An open client plus the in-process limit on requests in flight to this agent.

    Dagster concurrency pools bound steps across runs; inside one step many tasks share this
    agent, so the step bounds its own requests with `max_concurrency` too.
    """

    def __init__(self, client: AgentClient, max_concurrency: int) -> None:
        self.client = client
        self._slots = asyncio.Semaphore(max_concurrency)

    async def invoke(self, request: AgentRequest, on_send: Callable[[], None] | None = None) -> AgentResponse:
        """`on_send` runs once a slot is free, right before the request leaves (lateness)."""
        async with self._slots:
            if on_send is not None:
                on_send()
            return await self.client.invoke(request)


class AgentResource(dg.ConfigurableResource):
    """Settings of one agent; the bearer token is read from `auth_env` when a step starts."""

    name: str
    kind: str
    base_url: str
    model: str | None = None
    auth_env: str | None = None
    timeout_s: float = 120.0
    max_concurrency: int = 4
    headers: dict[str, str] = {}
    idempotency_header: str | None = "Idempotency-Key"
    history_turns: int = 10
    http_client: str = "aiohttp"
    options: dict[str, Any] = {}

    @classmethod
    def from_spec(cls, spec: AgentSpec) -> AgentResource:
        return cls(
            name=spec.name,
            kind=spec.kind,
            base_url=spec.base_url or "",
            model=spec.model,
            auth_env=spec.auth_env,
            timeout_s=spec.timeout,
            max_concurrency=spec.max_concurrency,
            headers=dict(spec.headers),
            idempotency_header=spec.idempotency_header,
            history_turns=spec.history_turns,
            http_client=spec.http_client,
            options=spec.options,
        )

    def settings(self) -> AgentSettings:
        token = None
        if self.auth_env:
            token = os.environ.get(self.auth_env)
            if not token:
                raise AgentCallError(
                    FailureKind.CONFIG,
                    f"agent {self.name!r} reads its token from the environment variable "
                    f"{self.auth_env}, which is not set where this run executes",
                )
        return AgentSettings(
            name=self.name,
            kind=self.kind,
            base_url=self.base_url,
            model=self.model,
            timeout_s=self.timeout_s,
            max_concurrency=self.max_concurrency,
            headers=dict(self.headers),
            auth_token=token,
            idempotency_header=self.idempotency_header,
            options=dict(self.options),
        )

    @property
    def replays_history(self) -> bool:
        from resources.agents.registry import AGENT_CLIENTS

        return AGENT_CLIENTS[self.kind].replays_history

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AgentConnection]:
        """A client bound to the running event loop, closed when the block ends."""
        settings = self.settings()
        if self.http_client == "httpx":
            pool = min(self.max_concurrency, MAX_HTTPX_CONNECTIONS)
            limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
            async with httpx.AsyncClient(limits=limits, timeout=self.timeout_s) as client:
                yield AgentConnection(create_client(settings, HttpxTransport(client)), self.max_concurrency)
            return
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=self.max_concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield AgentConnection(create_client(settings, AiohttpTransport(session)), self.max_concurrency)
