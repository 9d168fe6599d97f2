"""A fake OpenAI-compatible LLM on 127.0.0.1, for the real agent gateways the tests run.

The Hermes Agent API server and the OpenClaw gateway are real programs that call a model
provider; no model is reachable here, so they are pointed at this server. It answers
`/v1/chat/completions` (plain and streamed as server-sent events) and `/v1/models`, derives each
answer deterministically from the conversation it was sent, can be told to be slow and to work on
only `concurrency` requests at once (the rest wait, in arrival order, like a saturated provider),
and records every request so a test can read the transcript a gateway built (which turns of which
conversation reached the model, in which order, overlapping or not, and when each was served).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent_pipelines.http_server import RunningServer, serve_in_thread

MODEL = "fake-model"


@dataclass(frozen=True)
class LlmCall:
    """One request the fake model received, with when it started and finished answering."""

    number: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started_at: float  # when it arrived
    finished_at: float | None = None
    served_at: float | None = None  # when the model began on it (after waiting for `concurrency`)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    def user_texts(self) -> list[str]:
        return [content_text(m.get("content")) for m in self.messages if m.get("role") == "user"]

    @property
    def last_user_text(self) -> str:
        texts = self.user_texts()
        return texts[-1] if texts else ""


@dataclass
class FakeLlmState:
    latency_s: float = 0.0
    concurrency: int | None = None  # requests worked on at once; None: unbounded
    calls: list[LlmCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def slots(self) -> Any:
        """Held while a request is worked on (made on the server's loop at first use)."""
        if self.concurrency is None:
            return contextlib.nullcontext()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def served(self, number: int) -> None:
        with self.lock:
            self.calls[number] = dataclasses.replace(self.calls[number], served_at=time.time())

    def start(self, request: Request, body: dict[str, Any]) -> int:
        with self.lock:
            number = len(self.calls)
            self.calls.append(
                LlmCall(number, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body, time.time())
            )
            return number

    def finish(self, number: int) -> None:
        with self.lock:
            self.calls[number] = dataclasses.replace(self.calls[number], finished_at=time.time())


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def answer_for(messages: list[dict[str, Any]]) -> str:
    """Deterministic: the last user message's digest and how many user turns the conversation has."""
    users = [content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    last = users[-1] if users else ""
    digest = hashlib.sha256(last.encode()).hexdigest()[:8]
    return f"fake answer {digest} to turn {len(users)}: {last[:80]}"


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt_tokens = sum(len(content_text(m.get("content")).split()) for m in messages) or 1
    completion_tokens = len(answer.split())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def create_app(state: FakeLlmState) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        number = state.start(request, body)
        messages = body.get("messages") or []
        answer = answer_for(messages)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        model = body.get("model") or MODEL
        if not body.get("stream"):
            async with state.slots():
                state.served(number)
                await asyncio.sleep(state.latency_s)
            state.finish(number)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": _usage(messages, answer),
                }
            )

        async def events() -> Any:
            async with state.slots():
                state.served(number)
                await asyncio.sleep(state.latency_s)

            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
                payload = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
                return f"data: {json.dumps(payload)}\n\n".encode()

            yield chunk({"role": "assistant", "content": ""})
            for word in answer.split(" "):
                yield chunk({"content": word + " "})
            yield chunk({}, "stop", usage=_usage(messages, answer))
            yield b"data: [DONE]\n\n"
            state.finish(number)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


class RunningFakeLlm(RunningServer):
    state: FakeLlmState

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def calls(self) -> list[LlmCall]:
        with self.state.lock:
            return list(self.state.calls)


@contextmanager
def run_fake_llm(latency_s: float = 0.0, concurrency: int | None = None) -> Iterator[RunningFakeLlm]:
    state = FakeLlmState(latency_s=latency_s, concurrency=concurrency)
    server = serve_in_thread(create_app(state), name="fake-llm")
    running = RunningFakeLlm(server.server, server.thread, server.host, server.port)
    running.state = state
    try:
        yield running
    finally:
        running.stop()
