"""Agent clients: one interface (`base`), one module per protocol, and a registry by kind."""

from agent_pipelines.agents.base import (
    OUTCOME_UNKNOWN_KINDS,
    TRANSIENT_KINDS,
    AgentCallError,
    AgentClient,
    AgentRequest,
    AgentResponse,
    AgentSettings,
    ChatMessage,
    FailureKind,
    SessionMode,
    SessionState,
    classify_status,
    parse_retry_after,
)
from agent_pipelines.agents.registry import AGENT_CLIENTS, KIND_DEFAULTS, create_client

__all__ = [
    "AGENT_CLIENTS",
    "KIND_DEFAULTS",
    "OUTCOME_UNKNOWN_KINDS",
    "TRANSIENT_KINDS",
    "AgentCallError",
    "AgentClient",
    "AgentRequest",
    "AgentResponse",
    "AgentSettings",
    "ChatMessage",
    "FailureKind",
    "SessionMode",
    "SessionState",
    "classify_status",
    "create_client",
    "parse_retry_after",
]
