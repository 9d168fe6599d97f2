"""The HTTP client under the agent clients: aiohttp by default, httpx on request.

Measured on this 2-core machine (benchmarks/RESULTS.md), httpx's async client spends several
milliseconds of CPU per request: 40 requests sent at one instant reach a loopback agent spread
over ~170 ms, 200 over ~1.9 s; aiohttp sends the same in ~2-40 ms and ~0.2 s. On the hot path
of a scheduler that must send a burst of due tasks at once that decides the figures, so aiohttp
is the default (`http_client: aiohttp`) and httpx remains available (`http_client: httpx`).

Each transport turns its own exceptions into the same classified `AgentCallError`s, so the
retry rules do not depend on the client. Bodies and answers go through `json_codec` (orjson).
"""

from __future__ import annotations

import abc
import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import httpx

from agent_pipelines.agents.base import AgentCallError, FailureKind
from agent_pipelines.json_codec import dumps, loads
from agent_pipelines.telemetry import spans

HttpClientName = Literal["aiohttp", "httpx"]


@dataclass(frozen=True)
class Reply:
    """A finished HTTP response, independent of the client that fetched it."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return loads(self.content)


JSON_HEADERS = {"Content-Type": "application/json"}


def with_json_type(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a JSON body: the caller's, and a content type unless they set one."""
    if "Content-Type" in headers or any(name.lower() == "content-type" for name in headers):
        return dict(headers)
    return {**JSON_HEADERS, **headers}


class Transport(abc.ABC):
    @abc.abstractmethod
    async def request(
        self, method: str, url: str, *, body: Any = None, headers: Mapping[str, str], timeout_s: float
    ) -> Reply:
        """Send one request (JSON body when given); raise a classified `AgentCallError` for
        anything but a response."""

    async def post(self, url: str, *, body: Any, headers: Mapping[str, str], timeout_s: float) -> Reply:
        return await self.traced("POST", url, body=body, headers=headers, timeout_s=timeout_s)

    async def get(self, url: str, *, headers: Mapping[str, str], timeout_s: float) -> Reply:
        return await self.traced("GET", url, headers=headers, timeout_s=timeout_s)

    async def traced(
        self, method: str, url: str, *, body: Any = None, headers: Mapping[str, str], timeout_s: float
    ) -> Reply:
        """`request` with the current execution's `traceparent` (prepared before the instant),
        its client span recorded after the answer (telemetry/spans.py)."""
        outgoing = spans.outgoing()
        if outgoing is None and not spans.recording():  # a batch item, a probe: nothing to trace
            return await self.request(method, url, body=body, headers=headers, timeout_s=timeout_s)
        if outgoing is None:  # a provider other than ours
            with spans.http_request(method, url, headers) as (traced_headers, span):
                reply = await self.request(method, url, body=body, headers=traced_headers, timeout_s=timeout_s)
                spans.http_response(span, reply.status_code)
                return reply
        outgoing.sent(method, url)
        try:
            reply = await self.request(method, url, body=body, headers={**headers, **outgoing.headers}, timeout_s=timeout_s)
        except BaseException as exc:
            outgoing.failed(exc)
            raise
        outgoing.answered(reply.status_code)
        return reply


def _config_error(url: str, exc: BaseException) -> AgentCallError:
    # The exception text is left out: it may quote a header, i.e. the token.
    return AgentCallError(
        FailureKind.CONFIG,
        f"cannot send to {url}: {type(exc).__name__} (check the base_url scheme and headers)",
    )


def _timeout(url: str) -> AgentCallError:
    return AgentCallError(
        FailureKind.TIMEOUT,
        f"no answer from {url} before the timeout; the agent may still complete the request",
    )


def _disconnected(url: str, exc: BaseException) -> AgentCallError:
    return AgentCallError(FailureKind.DISCONNECTED, f"connection to {url} dropped after the request was sent: {exc!r}")


class HttpxTransport(Transport):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(
        self, method: str, url: str, *, body: Any = None, headers: Mapping[str, str], timeout_s: float
    ) -> Reply:
        timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        content = None if body is None else dumps(body)
        sent_headers = dict(headers) if content is None else with_json_type(headers)
        try:
            response = await self.client.request(method, url, content=content, headers=sent_headers, timeout=timeout)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError) as exc:
            raise _config_error(url, exc) from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"could not connect to {url} in time") from exc
        except httpx.TimeoutException as exc:
            raise _timeout(url) from exc
        except httpx.ConnectError as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"connection to {url} failed: {exc}") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise _disconnected(url, exc) from exc
        except httpx.HTTPError as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"request to {url} failed: {exc!r}") from exc
        return Reply(response.status_code, response.headers, response.content)


@functools.lru_cache(maxsize=64)
def aiohttp_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """One (immutable) timeout object per value, not one per request."""
    return aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))


def aiohttp_session(connector: aiohttp.TCPConnector | None = None) -> aiohttp.ClientSession:
    """A session for agent APIs: no cookie jar (agents authenticate by header; a jar would be
    filtered on every request and could carry one task's cookie into another's request)."""
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class AiohttpTransport(Transport):
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(
        self, method: str, url: str, *, body: Any = None, headers: Mapping[str, str], timeout_s: float
    ) -> Reply:
        timeout = aiohttp_timeout(timeout_s)
        data = None if body is None else dumps(body)
        sent_headers = headers if data is None else with_json_type(headers)
        try:
            async with self.session.request(method, url, data=data, headers=sent_headers, timeout=timeout) as response:
                content = await response.read()
                return Reply(response.status, response.headers, content)
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError, UnicodeEncodeError) as exc:
            raise _config_error(url, exc) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"could not connect to {url} in time") from exc
        except (asyncio.TimeoutError, aiohttp.SocketTimeoutError) as exc:
            raise _timeout(url) from exc
        except aiohttp.ClientConnectorError as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"connection to {url} failed: {exc}") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise _disconnected(url, exc) from exc
        except aiohttp.ClientError as exc:
            raise AgentCallError(FailureKind.CONNECTION, f"request to {url} failed: {exc!r}") from exc


def as_transport(http: Transport | httpx.AsyncClient | aiohttp.ClientSession) -> Transport:
    if isinstance(http, Transport):
        return http
    if isinstance(http, httpx.AsyncClient):
        return HttpxTransport(http)
    return AiohttpTransport(http)
