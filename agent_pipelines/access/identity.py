"""Who is calling: from a bearer token, the login cookie, or the identity headers of a trusted
authenticating proxy, in that order.

Identity headers (`X-Forwarded-User`, `X-Forwarded-Groups`, as oauth2-proxy and OIDC ingresses
set them) are believed only from the policy's `trusted_proxies`, judged by the address of the
TCP peer itself: uvicorn runs with `proxy_headers=False`, so `X-Forwarded-For` can never make a
client look like the proxy. A presented token that matches no user is a refusal, never a
fallback to another method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from agent_pipelines.access.policy import Policy
from agent_pipelines.audit import Actor

COOKIE_NAME = "agent_pipelines_token"
#: Without a policy the gate is open and callers are recorded under this name.
OPEN_USER = "anonymous"


@dataclass(frozen=True)
class Identity:
    name: str
    groups: tuple[str, ...] = field(default=())
    via: str = "ui"  # ui (browser: cookie or proxy) | graphql (API client with a token) | cli | ingress
    origin: str = "-"  # client address (and the proxy it came through)
    method: str = "open"  # token | cookie | header | open | cli | source

    def actor(self) -> Actor:
        return Actor(name=self.name, via=self.via, origin=self.origin, groups=self.groups)


class Unauthenticated(Exception):
    """No usable credentials; `reason` is for logs, never for the answer."""

    def __init__(self, reason: str, clear_cookie: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.clear_cookie = clear_cookie


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """Lower-cased names; a repeated header keeps its first value (never joined)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or []:
        name = raw_name.decode("latin-1").lower()
        found.setdefault(name, raw_value.decode("latin-1"))
    return found


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return unquote(value.strip().strip('"'))
    return None


def peer_address(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def origin_of(scope: Mapping[str, Any], policy: Policy | None) -> str:
    """The client address for the audit log: through a trusted proxy, the address it reports."""
    peer = peer_address(scope) or "-"
    if policy is not None and policy.is_trusted_proxy(peer):
        forwarded = _headers(scope).get("x-forwarded-for", "").split(",")[0].strip()
        if forwarded:
            return f"{forwarded} via {peer}"
    return peer


def identify(scope: Mapping[str, Any], policy: Policy | None) -> Identity:
    """The caller of an HTTP or websocket request; raises `Unauthenticated`."""
    origin = origin_of(scope, policy)
    if policy is None:
        return Identity(OPEN_USER, via="ui", origin=origin, method="open")
    headers = _headers(scope)
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        user = policy.user_for_token(presented.strip())
        if user is None:
            raise Unauthenticated("bearer token matches no user")
        return Identity(user, tuple(sorted(policy.groups_of(user))), via="graphql", origin=origin, method="token")
    if headers.get("authorization"):
        raise Unauthenticated(f"unsupported Authorization scheme {scheme!r}")
    cookie = _cookie(headers.get("cookie", ""), COOKIE_NAME)
    if cookie:
        user = policy.user_for_token(cookie)
        if user is None:
            raise Unauthenticated("login cookie matches no user (token revoked?)", clear_cookie=True)
        return Identity(user, tuple(sorted(policy.groups_of(user))), via="ui", origin=origin, method="cookie")
    names = policy.spec.identity_headers
    if policy.is_trusted_proxy(peer_address(scope)):
        user = (headers.get(names.user.lower()) or headers.get(names.email.lower()) or "").strip()
        if user:
            extra = [g.strip() for g in headers.get(names.groups.lower(), "").split(",") if g.strip()]
            return Identity(user, tuple(sorted(policy.groups_of(user, extra))), via="ui", origin=origin, method="header")
    elif headers.get(names.user.lower()) or headers.get(names.email.lower()):
        raise Unauthenticated(f"identity header from {peer_address(scope)}, which is not a trusted proxy: ignored")
    raise Unauthenticated("no credentials")


def cli_identity(policy: Policy | None) -> Identity:
    """The CLI's caller (`$AGENT_PIPELINES_USER` or the OS user), with the policy's groups."""
    from agent_pipelines.audit import cli_actor

    actor = cli_actor()
    groups = tuple(sorted(policy.groups_of(actor.name))) if policy is not None else ()
    return Identity(actor.name, groups, via="cli", origin=actor.origin, method="cli")
