"""Which client speaks for which agent `kind`, and the defaults each kind brings."""

from __future__ import annotations

import dataclasses
from typing import Any


from agent_pipelines.agents.base import AgentCallError, AgentClient, AgentSettings, FailureKind
from agent_pipelines.agents.dify import DifyClient
from agent_pipelines.agents.http_agent import HttpAgentClient
from agent_pipelines.agents.openai_chat import HermesClient, OpenAIChatClient, OpenClawClient

AGENT_CLIENTS: dict[str, type[AgentClient]] = {
    "openai_chat": OpenAIChatClient,
    "openclaw": OpenClawClient,
    "hermes": HermesClient,
    "dify": DifyClient,
    "http": HttpAgentClient,
}

# Defaults a kind fills in when the agent's config leaves them out, declared on each client:
# openclaw http://127.0.0.1:18789 (model None: it derives from the `agent_id` option),
# hermes http://127.0.0.1:8642 with model `hermes-agent`, the others have none.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    kind: {
        "base_url": getattr(client_class, "default_base_url", None),
        "model": getattr(client_class, "default_model", None),
    }
    for kind, client_class in AGENT_CLIENTS.items()
}


def create_client(settings: AgentSettings, http: Any) -> AgentClient:
    """The client for `settings.kind`, with the kind's defaults filled in.

    Raises `AgentCallError(CONFIG)` for an unknown kind or a missing base URL.
    """
    client_class = AGENT_CLIENTS.get(settings.kind)
    if client_class is None:
        raise AgentCallError(
            FailureKind.CONFIG,
            f"agent {settings.name!r} has unknown kind {settings.kind!r} "
            f"(known: {', '.join(sorted(AGENT_CLIENTS))})",
        )
    defaults = KIND_DEFAULTS.get(settings.kind, {})
    base_url = settings.base_url or defaults.get("base_url")
    if not base_url:
        raise AgentCallError(
            FailureKind.CONFIG, f"agent {settings.name!r} ({settings.kind}) needs a base_url"
        )
    settings = dataclasses.replace(
        settings, base_url=base_url, model=settings.model or defaults.get("model")
    )
    return client_class(settings, http)
