"""The one interface every agent kind implements, and how failures are classified.

Dagster owns retries: a client sends exactly one HTTP request per `invoke` and, when it fails,
raises `AgentCallError` saying *what kind* of failure it was. The caller decides from the kind
whether the step may be retried (see `AgentCallError.is_retryable`).
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from agent_pipelines.agents.credentials import TokenSource
    from agent_pipelines.agents.transport import Reply


SessionMode = Literal["isolated", "task"]


class FailureKind(str, enum.Enum):
    """Why an agent call failed; decides retry and whether the outcome is known."""

    CONNECTION = "connection"  # never reached the agent: refused, DNS, connect or pool timeout
    TIMEOUT = "timeout"  # request sent, no complete answer in time: the agent may still act
    DISCONNECTED = "disconnected"  # connection dropped after the request was sent
    RATE_LIMITED = "rate_limited"  # 429, maybe with Retry-After
    SERVER_ERROR = "server_error"  # 5xx (Hermes: a failed agent turn is a 502 with details)
    AUTH = "auth"  # 401/403: the token is missing, wrong or expired; retrying cannot help
    CLIENT_ERROR = "client_error"  # other 4xx: our request is wrong, retrying cannot help
    MALFORMED = "malformed"  # 2xx whose body is not what the protocol promises
    CONFIG = "config"  # our side: missing secret, bad template; nothing was sent


# Failures after which the agent may have done the work (sent the mail, pushed the commit).
OUTCOME_UNKNOWN_KINDS = frozenset({FailureKind.TIMEOUT, FailureKind.DISCONNECTED, FailureKind.MALFORMED})
# Failures where the request certainly did not complete and sending it again is safe.
TRANSIENT_KINDS = frozenset({FailureKind.CONNECTION, FailureKind.RATE_LIMITED, FailureKind.SERVER_ERROR})
# Failures that say the agent itself is unusable, not this one request (see `agents.health`).
AGENT_DOWN_KINDS = frozenset({FailureKind.CONNECTION, FailureKind.AUTH})


class AgentCallError(Exception):
    """A classified failure of one agent call."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.details = dict(details or {})

    @property
    def outcome_unknown(self) -> bool:
        return self.kind in OUTCOME_UNKNOWN_KINDS

    def is_retryable(self, idempotent: bool) -> bool:
        """Transient failures always; outcome-unknown ones only for tasks declared idempotent.

        A malformed 2xx is retried only for idempotent tasks too: the agent answered, so it
        probably acted, and the idempotency key makes it return the same answer again.
        """
        if self.kind in TRANSIENT_KINDS:
            return True
        return idempotent and self.outcome_unknown

    def describe(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{self.kind.value}{status}: {self.message}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class SessionState:
    """What an adapter needs to continue (or not) a conversation.

    `key` is stable for every run of a task in `task` mode and unique per execution in
    `isolated` mode. `remote_id` is the id the agent handed back last time (Hermes session id,
    Dify conversation id); `history` is the replay window for stateless endpoints.
    """

    mode: SessionMode
    key: str
    remote_id: str | None = None
    history: Sequence[ChatMessage] = ()


@dataclass(frozen=True)
class AgentRequest:
    prompt: str
    idempotency_key: str
    session: SessionState
    timeout_s: float
    task: str
    system: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentResponse:
    output: str
    latency_ms: float
    tokens_in: int | None = None
    tokens_out: int | None = None
    session_id: str | None = None
    model: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSettings:
    """An agent's connection settings with its secret already resolved (never logged)."""

    name: str
    kind: str
    base_url: str
    model: str | None = None
    timeout_s: float = 120.0
    max_concurrency: int = 4
    headers: Mapping[str, str] = field(default_factory=dict)
    auth_token: str | None = None  # a fixed token; otherwise `token_source` is read per request
    idempotency_header: str | None = "Idempotency-Key"
    options: Mapping[str, Any] = field(default_factory=dict)
    token_source: TokenSource | None = None

    def bearer_token(self) -> str | None:
        if self.auth_token:
            return self.auth_token
        return self.token_source.token() if self.token_source is not None else None

    def auth_hint(self) -> str:
        if self.token_source is not None:
            return f"; check the token in {self.token_source.describe()}"
        return ""


class AgentClient(abc.ABC):
    """One agent kind's protocol over a shared HTTP transport (see `transport.py`)."""

    #: True when the endpoint is stateless and `task` sessions need the history replayed.
    replays_history: ClassVar[bool] = False
    #: (token, headers) every request carries, checked once for the token they were built with
    _fixed_headers: tuple[str | None, dict[str, str]] | None = None

    def __init__(self, settings: AgentSettings, http: Any) -> None:
        """`http`: a `Transport`, or an `aiohttp.ClientSession` / `httpx.AsyncClient` to wrap."""
        from agent_pipelines.agents.transport import as_transport

        self.settings = settings
        self.http = as_transport(http)

    @abc.abstractmethod
    async def invoke(self, request: AgentRequest) -> AgentResponse:
        """Send one request; return the answer or raise `AgentCallError`."""

    def health_path(self) -> str | None:
        """A GET that answers 2xx when the agent is up and accepts our token (None: no such path,
        a TCP connect is the probe). `health_path` in the agent's settings wins."""
        return self.settings.options.get("health_path")

    async def probe(self, timeout_s: float = 5.0) -> None:
        """Raise a classified `AgentCallError` unless the agent is reachable (and, where it has a
        health path, accepts our credentials). Used to tell when an unhealthy agent is back."""
        path = self.health_path()
        if path is None:
            await tcp_probe(self.settings.base_url, timeout_s)
            return
        url = f"{self.settings.base_url.rstrip('/')}{path}"
        response = await self.http.get(url, headers=self.auth_headers(), timeout_s=timeout_s)
        if response.status_code >= 300:
            error = classify_status(response)
            if error.kind is FailureKind.AUTH:
                error.message += self.settings.auth_hint()
            raise error

    def auth_headers(self) -> dict[str, str]:
        headers = dict(self.settings.headers)
        token = self.settings.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def base_headers(self, request: AgentRequest) -> dict[str, str]:
        token = self.settings.bearer_token()
        fixed = self._fixed_headers
        if fixed is None or fixed[0] != token:  # built and checked once per token, not per request
            headers = {"Content-Type": "application/json", **self.settings.headers}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            for name, value in headers.items():
                self._check_header(name, value)
            fixed = self._fixed_headers = (token, headers)
        headers = dict(fixed[1])
        if self.settings.idempotency_header:
            self._check_header(self.settings.idempotency_header, request.idempotency_key)
            headers[self.settings.idempotency_header] = request.idempotency_key
        return headers

    def _check_header(self, name: str, value: str) -> None:
        if not (value.isascii() and value.isprintable()):
            # The value is left out of the message: it may be the token.
            raise AgentCallError(
                FailureKind.CONFIG,
                f"header {name!r} of agent {self.settings.name!r} has a value HTTP cannot carry "
                "(non-ASCII or control characters)",
            )

    async def post_json(
        self, url: str, body: Any, request: AgentRequest, headers: Mapping[str, str]
    ) -> tuple[Reply, Any, float]:
        """POST `body`; return the response, its decoded JSON and the latency in ms.

        Every transport failure and non-2xx status comes back as a classified `AgentCallError`.
        """
        started = time.perf_counter()
        response = await self.http.post(url, body=body, headers=headers, timeout_s=request.timeout_s)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if response.status_code >= 300:
            error = classify_status(response)
            if error.kind is FailureKind.AUTH:
                error.message += self.settings.auth_hint()
            raise error
        try:
            payload = response.json()
        except ValueError as exc:
            raise AgentCallError(
                FailureKind.MALFORMED,
                f"agent answered HTTP {response.status_code} with a body that is not JSON: "
                f"{response.text[:200]!r}",
                status_code=response.status_code,
            ) from exc
        return response, payload, latency_ms


async def tcp_probe(base_url: str, timeout_s: float) -> None:
    """Connect to the agent's host and port and close again."""
    import asyncio
    from urllib.parse import urlparse

    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        raise AgentCallError(FailureKind.CONNECTION, f"cannot connect to {parsed.hostname}:{port}: {exc!r}") from exc
    writer.close()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_status(response: Reply) -> AgentCallError:
    status = response.status_code
    detail = response.text[:500]
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return AgentCallError(
            FailureKind.RATE_LIMITED,
            f"rate limited (Retry-After: {retry_after if retry_after is not None else 'not given'})",
            status_code=status,
            retry_after_s=retry_after,
            details={"body": detail},
        )
    if status in (401, 403):
        return AgentCallError(
            FailureKind.AUTH,
            f"agent refused our credentials with HTTP {status}: {detail[:200]}",
            status_code=status,
            details={"body": detail},
        )
    if status >= 500 or status == 408:  # 408: a gateway gave up waiting for its model
        return AgentCallError(
            FailureKind.SERVER_ERROR,
            f"agent failed with HTTP {status}: {detail}",
            status_code=status,
            details={"body": detail},
        )
    return AgentCallError(
        FailureKind.CLIENT_ERROR,
        f"agent rejected the request with HTTP {status}: {detail}",
        status_code=status,
        details={"body": detail},
    )
