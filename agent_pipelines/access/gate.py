"""The authenticating gate in front of the Dagster webserver: an ASGI middleware around Dagster's
own app, in the same process, so the UI, its GraphQL API and its websockets work unchanged.

Every request needs an identity (`identity.identify`): unauthenticated ones get 401 (a login
page for browsers). Reads (GraphQL queries, static files, logs, the /ops pages) need a role on
any task. A GraphQL mutation is parsed and each of its fields judged on the tasks it touches
(`graphql_mutations`); if any is denied, nothing runs and the answer is HTTP 200 with a GraphQL
error, which the Dagster UI shows as a toast with the message. Allowed and denied mutations are
audited with the client address as origin; the allowed entry is written before the mutation
runs, so a mutation never happens unrecorded (a failed audit write is a 503).

A browser signs in once with `?token=` (or the login form): the token goes into an HttpOnly,
SameSite=Lax cookie. Cross-site request forgery is refused twice over: mutations over GET are
refused, and a cookie-authenticated mutation must be `application/json` (a type browsers only
send cross-site after a CORS preflight, which Dagster never answers) with a same-host `Origin`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_pipelines.access.decisions import (
    Decision,
    Role,
    TaskRef,
    can_all,
    may_change_anything,
    may_view,
)
from agent_pipelines.access.enforce import target_text
from agent_pipelines.access.graphql_mutations import (
    ANY_TASK,
    Targets,
    Touch,
    UnreadableRequest,
    has_mutation,
    judge,
    mutation_calls,
)
from agent_pipelines.access.identity import COOKIE_NAME, Identity, Unauthenticated, identify
from agent_pipelines.access.policy import Policy
from agent_pipelines.audit import audit

logger = logging.getLogger(__name__)

IDENTITY_STATE_KEY = "agent_pipelines.identity"
MAX_BODY_BYTES = 10 * 1024 * 1024
COOKIE_MAX_AGE_S = 12 * 3600
REPORT_ENDPOINTS = ("/report_asset_materialization/", "/report_asset_check/", "/report_asset_observation/")
OPEN_PATHS = ("/healthz",)


class _Reject(Exception):
    def __init__(self, status: int, message: str, graphql: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.graphql = graphql


class Gate:
    """ASGI middleware: `app` is Dagster's webserver app, `ops_app` serves `/ops/...`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Callable[[], Policy | None],
        store: Any,
        targets: Targets,
        ops_app: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.store = store
        self.targets = targets
        self.ops_app = ops_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in OPEN_PATHS:
            await _json(send, 200, {"status": "ok"})
            return
        policy = self.policy()
        if scope["type"] == "http" and (path == "/auth/login" or (scope["method"] == "GET" and _query(scope).get("token"))):
            await self._login(scope, receive, send, policy)
            return
        if path == "/auth/logout":
            await _redirect(send, "/auth/login", cookie=_cookie_header("", scope, max_age=0))
            return
        try:
            identity = identify(scope, policy)
        except Unauthenticated as exc:
            logger.info("unauthenticated %s %s from %s: %s", scope.get("method", "WS"), path, _peer(scope), exc.reason)
            await self._unauthenticated(scope, send, exc)
            return
        if not may_view(policy, identity):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4403})
            else:
                await _json(send, 403, {"error": f"{identity.name} has no role in the access policy: ask an admin for a grant"})
            return
        scope.setdefault("state", {})[IDENTITY_STATE_KEY] = identity
        if path == "/auth/whoami":
            await _json(send, 200, _whoami(policy, identity))
        elif path == "/ops" or path.startswith("/ops/"):
            if self.ops_app is None:
                await _json(send, 404, {"error": "no /ops pages are installed"})
            else:
                await self.ops_app(scope, receive, send)
        elif path == "/graphql" and scope["type"] == "websocket":
            await self.app(scope, self._guard_websocket(scope, receive, send, policy, identity), send)
        elif path == "/graphql":
            await self._graphql(scope, receive, send, policy, identity)
        elif scope["type"] == "http" and path.startswith(REPORT_ENDPOINTS) and scope["method"] != "GET":
            await self._report_endpoint(scope, receive, send, policy, identity)
        else:
            await self.app(scope, receive, send)

    # --- sign-in ------------------------------------------------------------------------

    async def _login(self, scope: Scope, receive: Receive, send: Send, policy: Policy | None) -> None:
        query = _query(scope)
        token = query.get("token", "")
        next_path = _safe_next(query.get("next") or (_path_and_query(scope) if scope["path"] != "/auth/login" else "/"))
        if scope["method"] == "POST":
            body = await _read_body(receive, 64 * 1024)
            form = dict(parse_qsl(body.decode("utf-8", "replace")))
            token = form.get("token", token)
            next_path = _safe_next(form.get("next") or next_path)
        if not token:
            await _html(send, 200, _login_page(next_path, ""))
            return
        if policy is None:
            await _redirect(send, next_path)
            return
        if policy.user_for_token(token) is None:
            logger.warning("failed sign-in from %s", _peer(scope))
            await _html(send, 401, _login_page(next_path, "That token is not valid."))
            return
        await _redirect(send, next_path, cookie=_cookie_header(token, scope, max_age=COOKIE_MAX_AGE_S))

    async def _unauthenticated(self, scope: Scope, send: Send, exc: Unauthenticated) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        headers = [(b"www-authenticate", b'Bearer realm="agent-pipelines"')]
        if exc.clear_cookie:
            headers.append((b"set-cookie", _cookie_header("", scope, max_age=0).encode()))
        accept = _header(scope, "accept")
        if scope["method"] == "GET" and "text/html" in accept:
            await _html(send, 401, _login_page(_safe_next(_path_and_query(scope)), ""), headers)
        else:
            await _json(send, 401, {"error": "authentication required: send `Authorization: Bearer <token>` or sign in at /auth/login"}, headers)

    # --- GraphQL over HTTP --------------------------------------------------------------

    async def _graphql(self, scope: Scope, receive: Receive, send: Send, policy: Policy | None, identity: Identity) -> None:
        method = scope["method"]
        body = b""
        if method == "POST":
            try:
                body = await _read_body(receive, MAX_BODY_BYTES)
            except _Reject as reject:
                await _json(send, reject.status, {"error": reject.message})
                return
        try:
            query, variables = _graphql_request(scope, body)
            calls = mutation_calls(query, variables) if query else []
            if calls and method != "POST":
                raise _Reject(405, "GraphQL mutations must be sent with POST", graphql=True)
            if calls and identity.method == "cookie":
                _refuse_cross_site(scope)
        except UnreadableRequest as exc:
            await _json(send, 400, {"data": None, "errors": [{"message": str(exc)}]})
            return
        except _Reject as reject:
            await _deny(send, reject.status if not reject.graphql else 200, reject.message)
            return
        if calls:
            try:
                touches = await asyncio.to_thread(lambda: [judge(call, self.targets) for call in calls])
                refused = await asyncio.to_thread(self._decide_and_audit, touches, policy, identity)
            except Exception:
                logger.exception("could not judge or audit a GraphQL mutation from %s", identity.name)
                await _json(send, 503, {"data": None, "errors": [{"message": "the access gate could not check or record this change; nothing was done"}]})
                return
            if refused:
                await _deny(send, 200, "; ".join(d.reason for d in refused[:3]) + (f" (+{len(refused) - 3} more)" if len(refused) > 3 else ""), refused)
                return
        await self.app(scope, _replay(body, receive), send)

    def _decide_and_audit(self, touches: Sequence[Touch], policy: Policy | None, identity: Identity) -> list[Decision]:
        """Judge every mutation field; audit the denied ones, or (when none is) the allowed."""
        judged: list[tuple[Touch, list[Decision]]] = []
        for touch in touches:
            if touch.call.name in ANY_TASK:
                decisions = [_on_some_task(policy, identity, touch)]
            else:
                decisions = can_all(policy, identity, touch.action, touch.tasks, touch.role)
            judged.append((touch, decisions))
        actor = identity.actor()
        refused = [d for _, decisions in judged for d in decisions if not d.allowed]
        if refused:
            for touch, decisions in judged:
                denied = [d for d in decisions if not d.allowed]
                if denied:
                    audit(
                        self.store, actor, touch.action, target_text(touch.tasks, touch.call.name), outcome="denied",
                        reason=denied[0].reason, needed=touch.role.name, denied_tasks=[d.task.name for d in denied if d.task],
                        **touch.summary,
                    )
            return refused
        for touch, _ in judged:
            if touch.audited:
                audit(
                    self.store, actor, touch.action, target_text(touch.tasks, touch.call.name),
                    tasks=[t.name for t in touch.tasks or []][:200], **({"policy": "open"} if policy is None else {}), **touch.summary,
                )
        return []

    # --- GraphQL over websocket (subscriptions only) ------------------------------------

    def _guard_websocket(self, scope: Scope, receive: Receive, send: Send, policy: Policy | None, identity: Identity) -> Receive:
        """Dagster answers subscriptions there; a mutation sent over it is refused and the
        socket closed (graphql-core would fail it anyway: defence in depth)."""

        async def guarded() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            try:
                data = json.loads(text)
            except ValueError:
                return message
            payload = data.get("payload") if isinstance(data, dict) else None
            query = payload.get("query") if isinstance(payload, dict) else None
            if isinstance(query, str) and has_mutation(query):
                await asyncio.to_thread(
                    audit, self.store, identity.actor(), "ui.websocket_mutation", "*", outcome="denied",
                    reason="mutations are not accepted over the websocket",
                )
                await send({"type": "websocket.close", "code": 4403})
                return {"type": "websocket.disconnect", "code": 4403}
            return message

        return guarded

    # --- Dagster's REST endpoints for runless asset events ------------------------------

    async def _report_endpoint(self, scope: Scope, receive: Receive, send: Send, policy: Policy | None, identity: Identity) -> None:
        path: str = scope["path"]
        endpoint = next(e for e in REPORT_ENDPOINTS if path.startswith(e))
        action = f"ui.{endpoint.strip('/')}"
        try:
            body = await _read_body(receive, MAX_BODY_BYTES)
            if identity.method == "cookie":
                _refuse_cross_site(scope)
        except _Reject as reject:
            await _json(send, reject.status, {"error": reject.message})
            return
        key = _report_key(path.removeprefix(endpoint), body, scope)
        try:
            tasks = await asyncio.to_thread(self.targets.tasks_of_assets, [key]) if key else None
            decisions = await asyncio.to_thread(can_all, policy, identity, action, tasks, Role.owner)
            refused = [d for d in decisions if not d.allowed]
            target = target_text(tasks, "/".join(key or ()) or "?")
            await asyncio.to_thread(
                audit, self.store, identity.actor(), action, target,
                outcome="denied" if refused else "allowed", asset="/".join(key or ()),
                **({"reason": refused[0].reason} if refused else {}),
            )
        except Exception:
            logger.exception("could not judge or audit %s from %s", path, identity.name)
            await _json(send, 503, {"error": "the access gate could not check or record this change; nothing was done"})
            return
        if refused:
            await _json(send, 403, {"error": refused[0].reason})
            return
        await self.app(scope, _replay(body, receive), send)


def _on_some_task(policy: Policy | None, identity: Identity, touch: Touch) -> Decision:
    """Platform-wide harmless mutations (reloading code): the role on any task suffices."""
    if policy is None:
        return Decision(True, touch.action, touch.role, Role.admin, None, "no access policy configured: access is open")
    held = policy.any_role(identity.name, policy.groups_of(identity.name, identity.groups))
    if held is not None and held >= touch.role:
        return Decision(True, touch.action, touch.role, held, None, f"{identity.name} is {held.name} on some tasks")
    return Decision(
        False, touch.action, touch.role, held, None,
        f"{identity.name} may not {touch.action}: it needs {touch.role.name} on some task and "
        f"{identity.name} is {held.name if held else 'nothing'}",
    )


# --- the per-request Dagster context: read-only for viewers ----------------------------------


def read_only_for(policy: Callable[[], Policy | None]) -> Callable[[object | None], bool]:
    """Whether Dagster should treat a request as read-only (it then greys out launch buttons):
    for identities that cannot change anything anywhere."""

    def decide(source: object | None) -> bool:
        scope = getattr(source, "scope", None)
        identity = (scope or {}).get("state", {}).get(IDENTITY_STATE_KEY) if scope is not None else None
        return identity is not None and not may_change_anything(policy(), identity)

    return decide


# --- helpers -----------------------------------------------------------------------------------


def _graphql_request(scope: Scope, body: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The query and variables exactly where the webserver will take them from
    (`dagster_webserver.graphql.GraphQLServer.graphql_http_endpoint`)."""
    data: Any
    if scope["method"] == "POST":
        content_type = _header(scope, "content-type")
        if "application/json" in content_type:
            try:
                data = json.loads(body or b"null")
            except ValueError:
                return None, None  # the webserver answers 400 without executing anything
            if not isinstance(data, dict):
                raise _Reject(400, "a GraphQL request body must be a JSON object (batched requests are not served)")
        elif "application/graphql" in content_type:
            data = {"query": body.decode("utf-8", "replace")}
        else:
            data = _query(scope)
    else:
        data = _query(scope)
    query = data.get("query")
    variables = data.get("variables")
    if isinstance(variables, str):
        try:
            variables = json.loads(variables)
        except ValueError:
            variables = None
    if query is not None and not isinstance(query, str):
        raise _Reject(400, "`query` must be a string")
    return query, variables if isinstance(variables, dict) else None


def _report_key(rest: str, body: bytes, scope: Scope) -> tuple[str, ...] | None:
    """The asset key the way `dagster_webserver.external_assets` reads it: path, then the JSON
    body's `asset_key`, then the query parameter."""
    if rest:
        return tuple(rest.split("/"))
    value: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        value = parsed.get("asset_key") if isinstance(parsed, dict) else None
    if value is None:
        raw = _query(scope).get("asset_key")
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _refuse_cross_site(scope: Scope) -> None:
    if "application/json" not in _header(scope, "content-type"):
        raise _Reject(403, "a change made with the login cookie must be sent as application/json", graphql=True)
    origin = _header(scope, "origin")
    if origin and origin != "null":
        host = _header(scope, "host")
        if urlsplit(origin).netloc != host:
            raise _Reject(403, f"cross-site change refused: Origin {origin} is not this server ({host})", graphql=True)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Reject(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Reject(413, f"request body over {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: str) -> str:
    wanted = name.encode()
    for key, value in scope.get("headers") or []:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return ""


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


def _path_and_query(scope: Scope) -> str:
    query = {k: v for k, v in _query(scope).items() if k != "token"}
    return scope["path"] + (f"?{urlencode(query)}" if query else "")


def _safe_next(value: str) -> str:
    """Only same-site paths: `//evil.example` and absolute URLs become `/`."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _cookie_header(token: str, scope: Scope, max_age: int) -> str:
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") or _header(scope, "x-forwarded-proto") == "https" else ""
    return f"{COOKIE_NAME}={quote(token, safe='')}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"


def _whoami(policy: Policy | None, identity: Identity) -> dict[str, Any]:
    if policy is None:
        return {"user": identity.name, "policy": None, "note": "no access policy: access is open"}
    groups = policy.groups_of(identity.name, identity.groups)
    return {
        "user": identity.name,
        "groups": sorted(groups),
        "authenticated_by": identity.method,
        "role_on_every_task": (r.name if (r := policy.global_role(identity.name, groups)) else None),
        "highest_role": (r.name if (r := policy.any_role(identity.name, groups)) else None),
        "policy_sha256": policy.digest,
    }


async def _deny(send: Send, status: int, message: str, decisions: Sequence[Decision] = ()) -> None:
    """A GraphQL error the Dagster UI shows (it toasts `errors[].message`)."""
    tasks = [d.task.name for d in decisions if isinstance(d.task, TaskRef)]
    await _json(
        send,
        status,
        {
            "data": None,
            "errors": [
                {
                    "message": f"Access denied: {message}",
                    "extensions": {"code": "FORBIDDEN", "tasks": tasks[:50], "needed": decisions[0].needed.name if decisions else None},
                }
            ],
        },
    )


async def _json(send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await _respond(send, status, json.dumps(payload).encode(), b"application/json", headers)


async def _html(send: Send, status: int, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await _respond(send, status, text.encode(), b"text/html; charset=utf-8", headers)


async def _redirect(send: Send, location: str, cookie: str | None = None) -> None:
    headers = [(b"location", location.encode("latin-1", "replace"))]
    if cookie is not None:
        headers.append((b"set-cookie", cookie.encode("latin-1")))
    await _respond(send, 303, b"", b"text/plain", headers)


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _login_page(next_path: str, problem: str) -> str:
    warning = f"<p style='color:#b42318'>{html.escape(problem)}</p>" if problem else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Sign in · agent_pipelines</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:420px;margin:80px auto'>"
        "<h2>agent_pipelines</h2><p>Sign in with your access token to open the Dagster UI.</p>"
        f"{warning}<form method='post' action='/auth/login'>"
        f"<input type='hidden' name='next' value='{html.escape(next_path, quote=True)}'>"
        "<input type='password' name='token' placeholder='token' autofocus style='width:100%;padding:6px'>"
        "<button type='submit' style='margin-top:8px'>Sign in</button></form>"
        "<p style='color:#6b7280;font-size:13px'>Behind a single sign-on proxy you never see this page.</p>"
        "</body></html>"
    )
