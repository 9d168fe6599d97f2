"""Dify apps through the service API, in blocking mode.

A chat app keeps the conversation on Dify's side (we pass back its `conversation_id`);
a workflow app is a stateless function of its inputs, so it has no session.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


from agent_pipelines.agents.base import (
    AgentCallError,
    AgentClient,
    AgentRequest,
    AgentResponse,
    FailureKind,
)
from agent_pipelines.agents.transport import Reply

APP_MODES = ("chat", "workflow")
FAILED_WORKFLOW_STATUSES = frozenset({"failed", "stopped"})


class DifyClient(AgentClient):
    """One Dify app; `settings.auth_token` is the app's API key."""

    kind: ClassVar[str] = "dify"
    default_base_url: ClassVar[str | None] = None
    default_model: ClassVar[str | None] = None

    @property
    def app_mode(self) -> str:
        return str(self.settings.options.get("app_mode") or "chat")

    @property
    def user(self) -> str:
        return str(self.settings.options.get("user") or "agent-pipelines")

    def health_path(self) -> str | None:
        return self.settings.options.get("health_path") or "/v1/parameters"

    def url(self, path: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}{path}"

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        if self.app_mode == "chat":
            return await self.invoke_chat(request)
        if self.app_mode == "workflow":
            return await self.invoke_workflow(request)
        raise AgentCallError(
            FailureKind.CONFIG,
            f"agent {self.settings.name!r}: unknown Dify app_mode {self.app_mode!r} "
            f"(expected one of {', '.join(APP_MODES)})",
        )

    async def invoke_chat(self, request: AgentRequest) -> AgentResponse:
        conversation_id = request.session.remote_id if request.session.mode == "task" else None
        body = {
            "inputs": {},
            "query": request.prompt,
            "response_mode": "blocking",
            "user": self.user,
            "conversation_id": conversation_id or "",
        }
        response, payload, latency_ms = await self.post_json(
            self.url("/v1/chat-messages"), body, request, self.base_headers(request)
        )
        answer = payload.get("answer") if isinstance(payload, dict) else None
        if not isinstance(answer, str):
            raise malformed(response, "chat answer has no string `answer`", payload)
        metadata = payload.get("metadata")
        usage = metadata.get("usage") if isinstance(metadata, dict) else None
        return AgentResponse(
            output=answer,
            latency_ms=latency_ms,
            tokens_in=as_int(usage, "prompt_tokens"),
            tokens_out=as_int(usage, "completion_tokens"),
            session_id=payload.get("conversation_id") or None,
            model=self.settings.model,
            metadata={
                "message_id": payload.get("message_id") or payload.get("id"),
                "conversation_id": payload.get("conversation_id"),
                "task_id": payload.get("task_id"),
                "http_status": response.status_code,
            },
        )

    async def invoke_workflow(self, request: AgentRequest) -> AgentResponse:
        input_key = str(self.settings.options.get("input_key") or "query")
        body = {
            "inputs": {input_key: request.prompt},
            "response_mode": "blocking",
            "user": self.user,
        }
        response, payload, latency_ms = await self.post_json(
            self.url("/v1/workflows/run"), body, request, self.base_headers(request)
        )
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise malformed(response, "workflow answer has no `data` object", payload)
        run_id = payload.get("workflow_run_id") or data.get("id")
        if data.get("status") in FAILED_WORKFLOW_STATUSES:
            raise AgentCallError(
                FailureKind.SERVER_ERROR,
                f"Dify workflow run {run_id} {data.get('status')}: {data.get('error')}",
                status_code=response.status_code,
                details={
                    "workflow_run_id": run_id,
                    "status": data.get("status"),
                    "error": data.get("error"),
                },
            )
        output = self.pick_output(data.get("outputs"), response, payload)
        return AgentResponse(
            output=output,
            latency_ms=latency_ms,
            tokens_in=None,
            tokens_out=as_int(data, "total_tokens"),
            session_id=None,
            model=self.settings.model,
            metadata={
                "workflow_run_id": run_id,
                "task_id": payload.get("task_id"),
                "status": data.get("status"),
                "elapsed_time": data.get("elapsed_time"),
                "http_status": response.status_code,
            },
        )

    def pick_output(self, outputs: Any, response: Reply, payload: Any) -> str:
        """`output_key` if configured, else `text`, else the only output there is."""
        if not isinstance(outputs, dict):
            raise malformed(response, "workflow answer has no `data.outputs` object", payload)
        key = self.settings.options.get("output_key")
        if key is None:
            if "text" in outputs:
                key = "text"
            elif len(outputs) == 1:
                key = next(iter(outputs))
            else:
                raise malformed(
                    response,
                    f"workflow has outputs {sorted(outputs)}; set option output_key to pick one",
                    payload,
                )
        if outputs.get(key) is None:
            raise malformed(response, f"workflow output {key!r} is missing", payload)
        value = outputs[key]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def malformed(response: Reply, what: str, payload: Any) -> AgentCallError:
    return AgentCallError(
        FailureKind.MALFORMED,
        f"{what}: {json.dumps(payload, default=str)[:200]}",
        status_code=response.status_code,
    )


def as_int(mapping: Any, key: str) -> int | None:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
