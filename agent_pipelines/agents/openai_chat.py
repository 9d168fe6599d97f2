"""Agents that speak OpenAI Chat Completions: plain endpoints, the OpenClaw gateway, Hermes Agent.

All three share one wire format; they differ only in how a conversation is continued:
a plain endpoint is stateless (we replay the history), OpenClaw keys sessions by a header we
choose, Hermes hands back a session id we must send next time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar


from agent_pipelines.agents.base import (
    AgentCallError,
    AgentClient,
    AgentRequest,
    AgentResponse,
    FailureKind,
)
from agent_pipelines.agents.transport import Reply

DEFAULT_PATH = "/v1/chat/completions"


class OpenAIChatClient(AgentClient):
    """A stateless OpenAI-compatible endpoint (vLLM, llama.cpp, LiteLLM, OpenAI itself)."""

    kind: ClassVar[str] = "openai_chat"
    replays_history: ClassVar[bool] = True
    default_base_url: ClassVar[str | None] = None
    default_model: ClassVar[str | None] = None

    # --- what subclasses adjust -------------------------------------------------------------

    def model_name(self) -> str | None:
        return self.settings.model or self.default_model

    def session_headers(self, request: AgentRequest) -> dict[str, str]:
        return {}

    def session_fields(self, request: AgentRequest) -> dict[str, Any]:
        """Extra body fields; `user` lets the server group a conversation's calls together."""
        return {"user": request.session.key}

    def session_id_from(self, request: AgentRequest, response: Reply) -> str | None:
        return None

    # --- the shared protocol ----------------------------------------------------------------

    def url(self) -> str:
        path = str(self.settings.options.get("path", DEFAULT_PATH))
        return f"{self.settings.base_url.rstrip('/')}{path}"

    def health_path(self) -> str | None:
        return self.settings.options.get("health_path") or "/v1/models"

    def build_messages(self, request: AgentRequest) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if self.replays_history and request.session.mode == "task":
            messages.extend({"role": m.role, "content": m.content} for m in request.session.history)
        messages.append({"role": "user", "content": request.prompt})
        return messages

    def build_body(self, request: AgentRequest) -> dict[str, Any]:
        model = self.model_name()
        if not model:
            raise AgentCallError(
                FailureKind.CONFIG,
                f"agent {self.settings.name!r} ({self.kind}) has no model configured",
            )
        return {
            "model": model,
            "messages": self.build_messages(request),
            "stream": False,
            **self.session_fields(request),
        }

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        body = self.build_body(request)
        headers = {**self.base_headers(request), **self.session_headers(request)}
        response, payload, latency_ms = await self.post_json(self.url(), body, request, headers)
        output = extract_content(payload, response.status_code)  # also proves payload is a dict
        usage = payload.get("usage")
        return AgentResponse(
            output=output,
            latency_ms=latency_ms,
            tokens_in=int_or_none(usage, "prompt_tokens"),
            tokens_out=int_or_none(usage, "completion_tokens"),
            session_id=self.session_id_from(request, response),
            model=payload.get("model") or body["model"],
            metadata={
                "response_id": payload.get("id"),
                "finish_reason": finish_reason(payload),
                "model": payload.get("model"),
                "http_status": response.status_code,
            },
        )


class OpenClawClient(OpenAIChatClient):
    """The OpenClaw gateway: sessions live on the gateway, keyed by `x-openclaw-session-key`."""

    kind: ClassVar[str] = "openclaw"
    replays_history: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = "http://127.0.0.1:18789"

    @property
    def agent_id(self) -> str:
        return str(self.settings.options.get("agent_id") or "main")

    def model_name(self) -> str | None:
        return self.settings.model or f"openclaw/{self.agent_id}"

    def session_headers(self, request: AgentRequest) -> dict[str, str]:
        # Always an explicit key: the task's stable one, or a fresh one per execution.
        return {"x-openclaw-agent-id": self.agent_id, "x-openclaw-session-key": request.session.key}

    def session_id_from(self, request: AgentRequest, response: Reply) -> str | None:
        return request.session.key


class HermesClient(OpenAIChatClient):
    """Hermes Agent's API server: it keeps each conversation under the session id the caller
    sends in `X-Hermes-Session-Id` (any id up to 256 characters without `/`, `\\`, `..` or a
    drive-like `x:`). We always send one: the task's stable id for `session: task`, a fresh one
    per execution for `session: isolated` (without it Hermes derives the id from the prompt, so a
    repeated prompt would land in an old session). A turn that fails inside the agent comes
    back as HTTP 200 with `finish_reason: "error"` and a `hermes` object saying so."""

    kind: ClassVar[str] = "hermes"
    replays_history: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = "http://127.0.0.1:8642"
    default_model: ClassVar[str | None] = "hermes-agent"
    session_header: ClassVar[str] = "X-Hermes-Session-Id"

    def session_fields(self, request: AgentRequest) -> dict[str, Any]:
        return {}

    def session_headers(self, request: AgentRequest) -> dict[str, str]:
        return {self.session_header: request.session.key}

    def session_id_from(self, request: AgentRequest, response: Reply) -> str | None:
        return response.headers.get(self.session_header) or request.session.key

    async def post_json(
        self, url: str, body: Any, request: AgentRequest, headers: Mapping[str, str]
    ) -> tuple[Reply, Any, float]:
        try:
            response, payload, latency_ms = await super().post_json(url, body, request, headers)
        except AgentCallError as exc:
            if exc.kind is FailureKind.SERVER_ERROR:
                raise hermes_turn_error(exc) from exc
            raise
        failed_turn(payload, response)
        return response, payload, latency_ms


def failed_turn(payload: Any, response: Reply) -> None:
    """Raise for a turn Hermes reports as failed inside a 200 answer. When it says the turn was
    partial (tools may have run), the outcome is unknown; otherwise nothing completed."""
    status = payload.get("hermes") if isinstance(payload, dict) else None
    failed = isinstance(status, dict) and status.get("failed")
    if not failed and finish_reason(payload) != "error" and response.headers.get("X-Hermes-Completed", "").lower() != "false":
        return
    status = status if isinstance(status, dict) else {}
    message = status.get("error") or response.headers.get("X-Hermes-Error") or extract_text(payload) or "agent turn failed"
    partial = bool(status.get("partial")) or response.headers.get("X-Hermes-Partial", "").lower() == "true"
    raise AgentCallError(
        FailureKind.DISCONNECTED if partial else FailureKind.SERVER_ERROR,
        f"Hermes agent turn failed{' part way (tools may have run)' if partial else ''}: {str(message)[:500]}",
        status_code=response.status_code,
        details={"hermes": status, "error_code": status.get("error_code")},
    )


def extract_text(payload: Any) -> str | None:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def hermes_turn_error(exc: AgentCallError) -> AgentCallError:
    """Lift the `{"error": {"message", "type"}}` of a failed Hermes turn into the error."""
    error = parse_error_body(str(exc.details.get("body", "")))
    if not error:
        return exc
    message = error.get("message") or "agent turn failed"
    return AgentCallError(
        FailureKind.SERVER_ERROR,
        f"Hermes agent turn failed with HTTP {exc.status_code}: {message}",
        status_code=exc.status_code,
        details={**exc.details, **error},
    )


# No closing quote required: `details["body"]` is cut at 500 characters, maybe mid-message.
_MESSAGE_RE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)')
_TYPE_RE = re.compile(r'"type"\s*:\s*"((?:[^"\\]|\\.)*)')


def parse_error_body(text: str) -> dict[str, Any]:
    """The error object of an OpenAI-style error body; tolerates the truncation in `details`."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return {k: v for k, v in error.items() if k in ("message", "type", "code")}
        if isinstance(error, str):
            return {"message": error}
        return {}
    found: dict[str, Any] = {}
    for key, pattern in (("message", _MESSAGE_RE), ("type", _TYPE_RE)):
        match = pattern.search(text)
        if match:
            try:
                found[key] = json.loads(f'"{match.group(1)}"')
            except ValueError:
                found[key] = match.group(1)
    return found


def extract_content(payload: Any, status_code: int) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise AgentCallError(
            FailureKind.MALFORMED,
            "answer has no string choices[0].message.content: "
            f"{json.dumps(payload, default=str)[:200]}",
            status_code=status_code,
        )
    return content


def finish_reason(payload: Any) -> str | None:
    try:
        return payload["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def int_or_none(mapping: Any, key: str) -> int | None:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
