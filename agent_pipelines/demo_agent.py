"""A deterministic demo agent over real HTTP, for `make run`, the tests and the benchmarks.

It speaks every protocol the clients in `agent_pipelines.agents` speak (OpenAI chat completions with
OpenClaw and Hermes session headers, Dify chat and workflow, a generic `/agent`), keeps
sessions, honours `Idempotency-Key`, records what it received and fails on demand, so the
whole pipeline can be exercised without a model. Everything is async: simulated latency is an
`asyncio.sleep`, so one process serves thousands of concurrent requests, unless `capacity` says
how many it works on at once: the rest then wait inside, in arrival order, the way a saturated
gateway queues them (`outstanding()` tells how many were waiting or worked on at each moment).

Faults follow the same split as `FailureKind`: status faults (500, 502, 429, ...) reject the
request before any work is done, while `delay_s`, `malformed` and `drop` do the work (counted,
cached under the idempotency key) and then spoil only the delivery, i.e. outcome unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent_pipelines.http_server import RunningServer, serve_in_thread, uvicorn_config

logger = logging.getLogger(__name__)

FAULT_KEYS = frozenset({"status", "body", "retry_after", "delay_s", "malformed", "drop", "headers"})
MALFORMED_BODY = b'{"choices": [{"message": {"content": "cut off mid-'
SESSION_HEADER = "X-Hermes-Session-Id"


@dataclass
class DemoAgentConfig:
    """How the demo agent behaves; everything random is derived from `seed`."""

    latency_ms: float = 0
    jitter_ms: float = 0  # latency is latency_ms +- jitter_ms, never below zero
    failure_rate: float = 0.0  # fraction of agent requests answered with 500, before any work
    seed: int = 0
    token: str | None = None  # when set, agent endpoints require `Authorization: Bearer <token>`
    model: str = "demo-model"
    log_limit: int = 10_000  # received requests kept in the log (oldest dropped first)
    #: sessions and idempotency keys remembered (least recently used forgotten first), as a real agent keeps
    #: them for a while: without a bound a long batch makes the demo agent slower and bigger
    memory_limit: int = 50_000
    capacity: int | None = None  # requests worked on at once; None: unbounded


@dataclass(frozen=True)
class RecordedRequest:
    """One agent request as received; headers are lower-cased."""

    number: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CachedResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_response(self, **extra_headers: str) -> Response:
        return Response(
            self.body,
            status_code=self.status,
            headers={**self.headers, **extra_headers},
            media_type="application/json",
        )


class BadRequest(Exception):
    """The request does not follow the protocol: 400, and no work done."""


class DemoAgentState:
    """Counters, sessions, idempotency cache, request log and fault script of one demo agent.

    The server's event loop and the test thread both touch it, so mutations hold a lock (never
    across an await). `reset()` bumps `generation`, so work still in flight from before a
    reset cannot leak into the counters of the next test.
    """

    def __init__(self, config: DemoAgentConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.generation += 1
            self.requests_total = 0
            self.executions_total = 0
            self.log: deque[RecordedRequest] = deque(maxlen=self.config.log_limit)
            self.sessions: OrderedDict[str, int] = OrderedDict()
            self.idempotency: OrderedDict[str, CachedResponse] = OrderedDict()
            self.inflight: dict[str, asyncio.Future[CachedResponse | None]] = {}
            self.faults: deque[dict[str, Any]] = deque()
            self.outstanding = 0  # agent requests received and not answered yet (waiting or worked on)
            self.load_log: deque[tuple[float, int]] = deque(maxlen=self.config.log_limit)  # (at, outstanding)
            self._capacity: asyncio.Semaphore | None = None

    def capacity_slot(self) -> asyncio.Semaphore | contextlib.AbstractAsyncContextManager[None]:
        """Held while a request is worked on (created on the server's loop, on first use)."""
        if self.config.capacity is None:
            return contextlib.nullcontext()
        with self._lock:
            if self._capacity is None:
                self._capacity = asyncio.Semaphore(self.config.capacity)
            return self._capacity

    def count_outstanding(self, change: int) -> None:
        with self._lock:
            self.outstanding += change
            self.load_log.append((time.time(), self.outstanding))

    def outstanding_log(self) -> list[tuple[float, int]]:
        """(time, requests waiting or worked on) after every arrival and answer."""
        with self._lock:
            return list(self.load_log)

    def push_faults(self, steps: Iterable[Mapping[str, Any]]) -> int:
        """Queue fault steps (validated); each is consumed by one incoming agent request."""
        checked = []
        for step in steps:
            if not isinstance(step, Mapping):
                raise ValueError(f"a fault step must be an object, got {step!r}")
            unknown = set(step) - FAULT_KEYS
            if unknown:
                raise ValueError(
                    f"unknown fault keys {sorted(unknown)} (known: {sorted(FAULT_KEYS)})"
                )
            checked.append(dict(step))
        with self._lock:
            self.faults.extend(checked)
            return len(self.faults)

    def next_fault(self) -> dict[str, Any]:
        with self._lock:
            return self.faults.popleft() if self.faults else {}

    def record(self, request: Request, body: Any) -> tuple[int, int]:
        """Log a received agent request; return its number and the current generation."""
        with self._lock:
            self.requests_total += 1
            self.log.append(
                RecordedRequest(
                    number=self.requests_total,
                    method=request.method,
                    path=request.url.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    received_at=time.time(),
                )
            )
            return self.requests_total, self.generation

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.log)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "executions_total": self.executions_total,
                "faults_pending": len(self.faults),
                "sessions": dict(self.sessions),
                "requests": [r.to_json() for r in self.log],
            }

    def next_turn(self, session_id: str) -> int:
        """Called inside an execution (under the lock)."""
        turn = self.sessions[session_id] = self.sessions.get(session_id, 0) + 1
        self.sessions.move_to_end(session_id)  # a conversation in use is not the one forgotten
        forget_oldest(self.sessions, self.config.memory_limit)
        return turn

    def should_fail(self, number: int) -> bool:
        rate = self.config.failure_rate
        return rate > 0 and unit_random(self.config.seed, "fail", number) < rate

    def latency_s(self, number: int) -> float:
        jitter = self.config.jitter_ms * (2 * unit_random(self.config.seed, "jitter", number) - 1)
        return max(0.0, self.config.latency_ms + jitter) / 1000.0

    def execute(
        self, generation: int, key: str | None, run: Callable[[DemoAgentState], CachedResponse]
    ) -> CachedResponse | None:
        """Do the work: count it, cache it. None when a reset happened meanwhile."""
        with self._lock:
            if generation != self.generation:
                return None
            result = run(self)
            self.executions_total += 1
            if key:
                self.idempotency[key] = result
                forget_oldest(self.idempotency, self.config.memory_limit)
            return result


def forget_oldest(remembered: OrderedDict[str, Any], limit: int) -> None:
    """Drop the entries inserted first until at most `limit` are left."""
    while len(remembered) > limit:
        remembered.popitem(last=False)


def unit_random(seed: int, salt: str, number: int) -> float:
    """A stable pseudo-random number in [0, 1) for request `number`."""
    digest = hashlib.sha256(f"{seed}:{salt}:{number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- answers -------------------------------------------------------------------------------


def word_count(text: str) -> int:
    return len(text.split())


def prompt_digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:8]


TUNING_MARKER = "### PROMPT TUNING REQUEST"
EVALUATION_MARKER = "### EVALUATION REQUEST"
JSON_INSTRUCTION = 'Answer in JSON: one object with a "summary" field.'
_QUOTED = re.compile(r"<<<\n(.*?)\n>>>", re.DOTALL)


def tune_prompt(request: str) -> str:
    """The demo tuner: it reads the current prompt and asks for JSON output, deterministically."""
    quoted = _QUOTED.search(request)
    current = quoted.group(1) if quoted else ""
    improved = current if JSON_INSTRUCTION in current else f"{current.rstrip()}\n{JSON_INSTRUCTION}"
    return json.dumps({"prompt": improved, "rationale": "the failing checks expect JSON output"})


def judge_output(request: str) -> str:
    """The demo judge: 0.9 for an output that is a JSON object, 0.2 otherwise."""
    blocks = _QUOTED.findall(request)
    output = blocks[-1] if blocks else ""
    try:
        is_object = isinstance(json.loads(output), dict)
    except ValueError:
        is_object = False
    score = 0.9 if is_object else 0.2
    return json.dumps({"score": score, "reason": "structured" if is_object else "not a JSON object"})


def compose_answer(prompt: str, session_id: str | None, turn: int) -> str:
    """Short markdown (or a JSON object when the prompt asks for JSON), fully deterministic.

    Two requests get special answers, so that the prompt tuning loop can run without a model:
    a prompt tuning request (`tune_prompt`) and an evaluation request (`judge_output`).
    """
    if prompt.startswith(TUNING_MARKER):
        return tune_prompt(prompt)
    if prompt.startswith(EVALUATION_MARKER):
        return judge_output(prompt)
    lines = prompt.strip().splitlines()
    title = lines[0].strip()[:80] if lines else "(empty prompt)"
    if re.search(r"\bjson\b", prompt, re.IGNORECASE):
        return json.dumps(
            {
                "summary": title,
                "digest": prompt_digest(prompt),
                "words": word_count(prompt),
                "session_id": session_id,
                "turn": turn,
            }
        )
    return (
        f"## {title}\n\n"
        f"- words: {word_count(prompt)}\n"
        f"- digest: {prompt_digest(prompt)}\n"
        f"- session: {session_id or '-'}\n"
        f"- turn: {turn}\n"
    )


def new_id() -> str:
    return str(uuid.uuid4())


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def text_of(content: Any) -> str:
    """Message content as text: a string, or OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


# --- protocols: validate (raise BadRequest), then return the work to run --------------------

Work = Callable[[DemoAgentState], CachedResponse]


def chat_completions(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Work:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("`messages` has no user message")
    prompt = text_of(users[-1].get("content"))
    prompt_tokens = sum(
        word_count(text_of(m.get("content"))) for m in messages if isinstance(m, dict)
    )
    session_key = (
        headers.get("x-hermes-session-id")
        or headers.get("x-openclaw-session-key")
        or (body.get("user") if isinstance(body.get("user"), str) else None)
    )

    def run(state: DemoAgentState) -> CachedResponse:
        session_id = session_key or new_id()
        answer = compose_answer(prompt, session_id, state.next_turn(session_id))
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(prompt_tokens, word_count(answer)),
        }
        return CachedResponse(200, json_bytes(payload), {SESSION_HEADER: session_id})

    return run


def dify_chat(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Work:
    query = body.get("query")
    if not isinstance(query, str):
        raise BadRequest("`query` must be a string")
    if body.get("response_mode") != "blocking":
        raise BadRequest("only response_mode 'blocking' is supported")
    conversation_id = body.get("conversation_id") or None

    def run(state: DemoAgentState) -> CachedResponse:
        session_id = conversation_id or new_id()
        answer = compose_answer(query, session_id, state.next_turn(session_id))
        message_id = new_id()
        payload = {
            "event": "message",
            "task_id": new_id(),
            "id": message_id,
            "message_id": message_id,
            "conversation_id": session_id,
            "mode": "chat",
            "answer": answer,
            "metadata": {"usage": usage(word_count(query), word_count(answer))},
            "created_at": int(time.time()),
        }
        return CachedResponse(200, json_bytes(payload))

    return run


def dify_workflow(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Work:
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise BadRequest("`inputs` must be an object")
    texts = [v for v in inputs.values() if isinstance(v, str)]
    prompt = (
        inputs["query"] if isinstance(inputs.get("query"), str) else (texts[0] if texts else None)
    )
    if prompt is None:
        raise BadRequest("`inputs` has no string input to answer")

    def run(state: DemoAgentState) -> CachedResponse:
        answer = compose_answer(prompt, None, 1)
        run_id = new_id()
        now = int(time.time())
        payload = {
            "workflow_run_id": run_id,
            "task_id": new_id(),
            "data": {
                "id": run_id,
                "workflow_id": "demo-workflow",
                "status": "succeeded",
                "outputs": {"text": answer},
                "error": None,
                "elapsed_time": 0.0,
                "total_tokens": word_count(prompt) + word_count(answer),
                "total_steps": 1,
                "created_at": now,
                "finished_at": now,
            },
        }
        return CachedResponse(200, json_bytes(payload))

    return run


def generic_agent(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Work:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("`prompt` must be a string")
    requested = body.get("session_id") or None
    system = body.get("system") if isinstance(body.get("system"), str) else ""

    def run(state: DemoAgentState) -> CachedResponse:
        session_id = str(requested) if requested else new_id()
        answer = compose_answer(prompt, session_id, state.next_turn(session_id))
        payload = {
            "output": answer,
            "usage": {
                "input_tokens": word_count(prompt) + word_count(system),
                "output_tokens": word_count(answer),
            },
            "session_id": session_id,
        }
        return CachedResponse(200, json_bytes(payload))

    return run


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


Protocol = Callable[[dict[str, Any], Mapping[str, str], str], Work]


# --- HTTP ----------------------------------------------------------------------------------

_DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "demo_agent_dropping", default=False
)


class _QuietDrops(logging.Filter):
    """Hide uvicorn's complaint about the response we cut off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DROPPING.get() and "without completing response" in record.getMessage())


def _install_log_filter() -> None:
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_QuietDrops())


class DropConnection(Response):
    """Start a 200 answer and stop: the client sees the connection close mid-response."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _DROPPING.set(True)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        # Returning now makes uvicorn close the transport without the promised body.


def error_response(status: int, message: str, kind: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind}}, status_code=status, headers=headers
    )


def fault_response(step: Mapping[str, Any]) -> Response:
    status = int(step["status"])
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "error"
    body = step.get("body")
    if body is None:
        body = {"error": {"message": f"injected fault: HTTP {status}", "type": kind}}
    headers = {str(k): str(v) for k, v in (step.get("headers") or {}).items()}
    if step.get("retry_after") is not None:
        headers["Retry-After"] = str(step["retry_after"])
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_agent_request(request: Request, protocol: Protocol) -> Response:
    state: DemoAgentState = request.app.state.demo_agent
    config = state.config
    raw = await request.body()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
    number, generation = state.record(request, body)

    if config.token and request.headers.get("authorization") != f"Bearer {config.token}":
        return error_response(401, "missing or wrong bearer token", "authentication_error")
    if not isinstance(body, dict):
        return error_response(400, "body must be a JSON object", "invalid_request_error")
    try:
        work = protocol(body, request.headers, config.model)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error")

    step = state.next_fault()
    delay_s = float(step.get("delay_s") or 0)
    if "status" in step:  # rejected before any work
        if delay_s:
            await asyncio.sleep(delay_s)
        return fault_response(step)
    if state.should_fail(number):
        return error_response(500, f"simulated failure of request {number}", "server_error")

    key = request.headers.get("idempotency-key")
    state.count_outstanding(+1)
    try:
        async with state.capacity_slot():
            result = await run_once(state, generation, key, work, state.latency_s(number) + delay_s)
    finally:
        state.count_outstanding(-1)
    if result is None:
        return error_response(503, "the demo agent was reset during this request", "server_error")
    replayed, cached = result
    if step.get("malformed"):
        return Response(MALFORMED_BODY, status_code=200, media_type="application/json")
    if step.get("drop"):
        return DropConnection()
    return cached.to_response(**({"Idempotent-Replayed": "true"} if replayed else {}))


async def run_once(
    state: DemoAgentState, generation: int, key: str | None, work: Work, sleep_s: float
) -> tuple[bool, CachedResponse] | None:
    """Run `work` once per idempotency key: repeats (even concurrent ones) get the first result."""
    if key:
        cached = state.idempotency.get(key)
        if cached is not None:
            return True, cached
        pending = state.inflight.get(key)
        if pending is not None:
            first = await asyncio.shield(pending)
            return None if first is None else (True, first)
    future: asyncio.Future[CachedResponse | None] | None = None
    if key:
        future = asyncio.get_running_loop().create_future()
        state.inflight[key] = future
    result: CachedResponse | None = None
    try:
        if sleep_s > 0:
            await asyncio.sleep(sleep_s)
        result = state.execute(generation, key, work)
    finally:
        if future is not None and key:
            if not future.done():
                future.set_result(result)
            if state.inflight.get(key) is future:
                del state.inflight[key]
    return None if result is None else (False, result)


def _agent_endpoint(protocol: Protocol) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handle_agent_request(request, protocol)
        except asyncio.CancelledError:
            # Only a stopping server cancels requests: act like a killed agent, cut the line.
            return DropConnection()

    return endpoint


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def authenticated_info(request: Request) -> Response:
    """`GET /v1/models` (OpenAI-compatible) and `/v1/parameters` (Dify): what a health probe
    asks; like the real ones they need the token, so a probe also proves the token works."""
    config = request.app.state.demo_agent.config
    if config.token and request.headers.get("authorization") != f"Bearer {config.token}":
        return error_response(401, "missing or wrong bearer token", "authentication_error")
    if request.url.path.endswith("/models"):
        return JSONResponse({"object": "list", "data": [{"id": config.model, "object": "model", "owned_by": "demo"}]})
    return JSONResponse({"opening_statement": "", "user_input_form": []})


async def control_faults(request: Request) -> Response:
    state: DemoAgentState = request.app.state.demo_agent
    try:
        steps = await request.json()
        if isinstance(steps, dict):
            steps = [steps]
        if not isinstance(steps, list):
            raise ValueError("expected a JSON list of fault steps")
        pending = state.push_faults(steps)
    except ValueError as exc:
        return error_response(400, str(exc), "invalid_request_error")
    return JSONResponse({"faults_pending": pending})


async def control_requests(request: Request) -> Response:
    return JSONResponse(request.app.state.demo_agent.snapshot())


async def control_reset(request: Request) -> Response:
    request.app.state.demo_agent.reset()
    return JSONResponse({"status": "reset"})


def create_app(config: DemoAgentConfig | None = None) -> Starlette:
    """The demo agent as an ASGI app; its `DemoAgentState` is `app.state.demo_agent`."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _agent_endpoint(chat_completions), methods=["POST"]),
            Route("/v1/chat-messages", _agent_endpoint(dify_chat), methods=["POST"]),
            Route("/v1/workflows/run", _agent_endpoint(dify_workflow), methods=["POST"]),
            Route("/agent", _agent_endpoint(generic_agent), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", authenticated_info, methods=["GET"]),
            Route("/v1/parameters", authenticated_info, methods=["GET"]),
            Route("/_control/faults", control_faults, methods=["POST"]),
            Route("/_control/requests", control_requests, methods=["GET"]),
            Route("/_control/reset", control_reset, methods=["POST"]),
        ]
    )
    app.state.demo_agent = DemoAgentState(config or DemoAgentConfig())
    _install_log_filter()
    return app


# --- running it ----------------------------------------------------------------------------


class RunningDemoAgent(RunningServer):
    """A demo agent serving from a background thread; a context manager that stops it."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        state: DemoAgentState,
        host: str,
        port: int,
    ) -> None:
        super().__init__(server, thread, host, port)
        self.state = state

    def push_faults(self, steps: Iterable[Mapping[str, Any]]) -> int:
        return self.state.push_faults(steps)

    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> RunningDemoAgent:
        return self


def run_in_thread(
    config: DemoAgentConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningDemoAgent:
    """Serve the demo agent from a daemon thread; returns once it accepts connections.

    The socket is bound here, so port 0 picks a free port and the port is known up front.
    `stop()` cuts off requests still in flight, like a killed agent.
    """
    app = create_app(config)
    running = serve_in_thread(app, host, port, name="demo-agent")
    return RunningDemoAgent(running.server, running.thread, app.state.demo_agent, running.host, running.port)


def serve(config: DemoAgentConfig | None = None, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the demo agent in the foreground until interrupted (for the CLI)."""
    uvicorn.Server(uvicorn_config(create_app(config), host=host, port=port)).run()
