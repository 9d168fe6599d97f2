"""The HTTP ingress: external systems POST events here, and each accepted one is stored first.

`POST /events/{source}` checks, in this order: header count and size (431), a known source and,
for bearer sources, the token before any body is read (both 401 with the same answer, so a
prober learns nothing about which sources exist), body size (413) and arrival time (408), an
HMAC signature (401; 503 when the server lacks the secret), a JSON object body no deeper than
64 levels (400), an event type (400) and a usable idempotency key (400). A refusal stores
nothing. An accepted event is committed to the `StateStore` before the 2xx goes out (202 when
new, 200 for a repeat of a stored id), so a sender that saw a 2xx can forget the event, and a
sender that saw anything else can retry with the same idempotency key without a duplicate.

Senders choose the idempotency key (`id_header`); the stored id is `<source>:<key>` so two
sources can never collide. A signed request's key is bound to its signature, so a replayed
request is always a duplicate; without any key every post is a new event. Served with
`server_options()`, a connection must deliver its headers within 10 s, and at most 512 are open.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_pipelines.catalog.loader import catalog_files, default_catalog_path, load_catalog
from agent_pipelines.catalog.model import BearerAuthSpec, EventSourceSpec, HmacAuthSpec
from agent_pipelines.scheduling.subscriptions import MISSING, field_at
from agent_pipelines.http_server import guarded_http_protocol, uvicorn_config
from agent_pipelines.store import StateStore, url_for_instance
from agent_pipelines.telemetry.metrics import metrics_route

if TYPE_CHECKING:
    from agent_pipelines.access.events import EventAccess
    from agent_pipelines.catalog.loader import Catalog
    from agent_pipelines.catalog.model import TaskSpec

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8788
MAX_KEY_CHARS = 200
# Column widths of `agent_pipelines_events` (PostgreSQL enforces them, SQLite does not).
MAX_EVENT_ID_CHARS = 255
MAX_TYPE_CHARS = 255
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: A request's headers must arrive within this long, its body within that.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 512

Sources = Callable[[], Mapping[str, EventSourceSpec]]


class Refusal(Exception):
    """A request the ingress turns down: nothing is stored. `reason` is logged, never answered
    (an answer must not tell a prober which part of its credentials was wrong)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.reason = reason or message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status, headers=self.headers)


# --- checks, in the order they run -------------------------------------------------------------


async def read_body(request: Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The raw body, refused from Content-Length when declared, else counted while streaming."""
    too_large = Refusal(
        413, f"body larger than this source's limit of {limit} bytes", {"Connection": "close"}
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refusal(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large  # stop reading: the rest is never buffered
                chunks.append(chunk)
    except ClientDisconnect:
        raise Refusal(400, "the client disconnected before sending the whole body") from None
    except TimeoutError:
        raise Refusal(408, f"the body did not arrive within {timeout_s:g} s", {"Connection": "close"}) from None
    return b"".join(chunks)


def _secret(env_var: str) -> bytes:
    value = os.environ.get(env_var)
    if not value:
        raise Refusal(
            503,
            f"this source's secret is not configured on the server: environment variable "
            f"{env_var} is not set",
        )
    return value.encode()


UNAUTHORIZED = "missing or invalid credentials for this path"


def unauthorized(reason: str) -> Refusal:
    """The one answer to unknown sources and wrong credentials alike; `reason` is only logged."""
    return Refusal(401, UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="agent-pipelines"'}, reason=reason)


def authenticate(spec: EventSourceSpec, request: Request, body: bytes, now: float) -> str | None:
    """Raise a Refusal unless the request carries the source's bearer token or a valid (and, when
    timestamped, fresh) HMAC signature. Returns the event key a signature stands for when the
    request's own key must not be trusted or is absent, so that replaying it is a duplicate."""
    auth = spec.auth
    if isinstance(auth, BearerAuthSpec):
        token = _secret(auth.token_env)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _same(presented.strip(), token):
            raise unauthorized("bearer token missing or wrong")
        return None
    assert isinstance(auth, HmacAuthSpec)
    secret = _secret(auth.secret_env)
    header = request.headers.get(auth.header_name, "")
    if auth.format == "github":
        algorithm, _, presented = header.strip().partition("=")
        if algorithm != "sha256" or not presented:
            raise unauthorized(f"header {auth.header_name} is not `sha256=<hex>`")
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not _same(presented.lower(), expected.encode()):
            raise unauthorized("signature does not match")
        return f"sig-{expected[:40]}"  # the key header is not signed: never trust it
    fields = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    stamp, presented = fields.get("t", ""), fields.get("v1", "")
    if not (stamp.isdigit() and len(stamp) <= 12) or not presented:
        raise unauthorized(f"header {auth.header_name} is not `t=<unix seconds>,v1=<hex>`")
    key = request.headers.get(spec.id_header, "")
    expected = hmac.new(secret, f"{stamp}.{key}.".encode("latin-1", "replace") + body, hashlib.sha256).hexdigest()
    if not _same(presented.lower(), expected.encode()):
        raise unauthorized("signature does not match")
    if abs(now - int(stamp)) > auth.tolerance:
        raise Refusal(
            401,
            f"signature time is more than {auth.tolerance:g} s from the server's clock: sign the request again",
            reason=f"stale signature ({now - int(stamp):+.0f} s)",
        )
    return None if key else f"sig-{expected[:40]}"


def _same(presented: str, expected: bytes) -> bool:
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected)


#: JSON nested deeper than this is refused before it is parsed (Python's parser recurses).
MAX_JSON_DEPTH = 64
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


def json_depth(body: bytes) -> int:
    """The deepest nesting of `[` and `{` outside strings, without parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def check_headers(request: Request) -> None:
    raw = request.scope.get("headers") or []
    if len(raw) > MAX_HEADERS or sum(len(k) + len(v) for k, v in raw) > MAX_HEADER_BYTES:
        raise Refusal(431, f"request headers too large: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def parse_payload(body: bytes) -> dict[str, Any]:
    if json_depth(body) > MAX_JSON_DEPTH:
        raise Refusal(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise Refusal(400, "body is not valid JSON: it is not UTF-8") from None
    except ValueError as exc:
        raise Refusal(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Refusal(400, f"body must be a JSON object, got a JSON {type(payload).__name__}")
    return payload


def event_type(spec: EventSourceSpec, request: Request, payload: dict[str, Any]) -> str:
    if spec.type_header and spec.type_header in request.headers:
        value: Any = request.headers[spec.type_header].strip()
        where = f"header {spec.type_header}"
    else:
        value = field_at(payload, spec.type_field)
        where = f"field {spec.type_field!r} of the body"
        if value is MISSING or value is None:
            also = f" (or header {spec.type_header})" if spec.type_header else ""
            raise Refusal(400, f"missing event type: expected a string at {where}{also}")
    if not isinstance(value, str) or not value or len(value) > MAX_TYPE_CHARS or "\x00" in value:
        raise Refusal(
            400,
            f"event type at {where} must be a non-empty string of at most {MAX_TYPE_CHARS} "
            f"characters, got {json.dumps(value)[:100]}",
        )
    return value


def event_id(spec: EventSourceSpec, source: str, request: Request, signed_key: str | None = None) -> str:
    """`<source>:<key>`: the key a signature stands for, else the sender's idempotency key,
    else a fresh one."""
    if signed_key is not None:
        return f"{source}:{signed_key}"
    key = request.headers.get(spec.id_header)
    if key is None:
        return f"{source}:{uuid.uuid4().hex}"
    limit = min(MAX_KEY_CHARS, MAX_EVENT_ID_CHARS - len(source) - 1)
    if not (1 <= len(key) <= limit and key.isascii() and key.isprintable()):
        raise Refusal(
            400, f"header {spec.id_header} must be 1 to {limit} printable ASCII characters, got {key[:64]!r}"
        )
    return f"{source}:{key}"


# --- the app -----------------------------------------------------------------------------------


def create_ingress_app(
    sources: Sources,
    store: StateStore,
    clock: Callable[[], float] = time.time,
    body_timeout_s: float = BODY_TIMEOUT_S,
    access: EventAccess | None = None,
) -> Starlette:
    """The ingress as an ASGI app; `sources` is called per request, so catalog edits apply.
    `clock` (unix seconds) judges the freshness of timestamped signatures. `access` refuses
    (403) events that would start tasks the access policy does not grant their source, and
    audits deliveries (agent_pipelines.access.events)."""

    async def receive_event(request: Request) -> Response:
        source = request.path_params["source"]
        client = request.client.host if request.client else "-"
        if request.method != "POST":
            return _refused(
                Refusal(405, f"use POST to send events to /events/{source}", {"Allow": "POST"}),
                source,
                client,
            )
        try:
            check_headers(request)
            # In a worker thread: a catalog reload must never stall the event loop.
            spec = (await asyncio.to_thread(sources)).get(source)
            if spec is None:
                # The same answer as wrong credentials: nothing about sources is revealed.
                raise unauthorized("unknown source")
            if isinstance(spec.auth, BearerAuthSpec):
                authenticate(spec, request, b"", clock())  # before reading any body
            body = await read_body(request, spec.max_body_bytes, body_timeout_s)
            signed_key = authenticate(spec, request, body, clock()) if isinstance(spec.auth, HmacAuthSpec) else None
            payload = parse_payload(body)
            kind = event_type(spec, request, payload)
            stored_id = event_id(spec, source, request, signed_key)
            denied = access.denied_tasks(source, kind, payload) if access is not None else None
            if denied:
                raise Refusal(403, await asyncio.to_thread(access.refuse, source, kind, denied, client))  # type: ignore[union-attr]
        except Refusal as refusal:
            return _refused(refusal, source, client)
        try:
            # Synchronous SQLAlchemy: a worker thread keeps the event loop serving meanwhile.
            event, inserted = await asyncio.to_thread(
                store.insert_event, event_id=stored_id, source=source, type=kind, payload=payload
            )
        except Exception:
            logger.exception("could not store event %r from source %r", stored_id, source)
            return _refused(
                Refusal(
                    503,
                    f"the event could not be stored; retry with the same {spec.id_header} header",
                    {"Retry-After": "5"},
                ),
                source,
                client,
                log=False,
            )
        if access is not None and inserted:
            access.accepted(source, event.seq, client)
        logger.info(  # %r: ids and types come from the sender, keep them on one line
            "%s event %r (type %r, seq %s) from source %r, client %s",
            "accepted" if inserted else "duplicate of stored",
            stored_id,
            kind,
            event.seq,
            source,
            client,
        )
        return JSONResponse(
            {"id": event.event_id, "seq": event.seq, "duplicate": not inserted},
            status_code=202 if inserted else 200,
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route for {request.url.path}; events go to POST /events/{{source}}"
        else:
            message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(
        routes=[
            # Every method routes here, so that anything but POST gets a JSON 405.
            Route("/events/{source}", receive_event, methods=list(ALL_METHODS)),
            Route("/health", health, methods=["GET"]),
            # Prometheus metrics, read from the store at scrape time (docs/observability.md).
            metrics_route(store),
        ],
        exception_handlers={HTTPException: http_error},
    )


def _refused(refusal: Refusal, source: str, client: str, log: bool = True) -> JSONResponse:
    if log:
        logger.warning("refused event for source %r from %s: %s %s", source, client, refusal.status, refusal.reason)
    return refusal.response()


# --- serving with a live catalog ---------------------------------------------------------------


class CatalogSources:
    """The event sources of a catalog, reloaded when its files change.

    A call checks the files' mtimes (and sizes and inodes, for coarse clocks and atomic renames)
    at most every `min_interval_s`, so requests pay a few `stat` calls now and then, and a
    reload only when something changed. A catalog that fails to load keeps the previous sources.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        min_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else default_catalog_path()
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: Mapping[str, EventSourceSpec] = {}
        self._catalog: Catalog | None = None
        self._subscribed: dict[str, list[TaskSpec]] = {}
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._checked_at = clock()
        self._reload_if_changed()

    def __call__(self) -> Mapping[str, EventSourceSpec]:
        if self._clock() - self._checked_at >= self.min_interval_s:
            with self._lock:
                if self._clock() - self._checked_at >= self.min_interval_s:
                    self._reload_if_changed()
                    self._checked_at = self._clock()
        return self._sources

    def catalog(self) -> Catalog | None:
        """The whole catalog the sources come from (the access gate maps assets to tasks)."""
        self()
        return self._catalog

    def subscribed(self, source: str) -> list[TaskSpec]:
        """Tasks subscribed to `source`: the candidates of the ingress's access check."""
        self()
        return self._subscribed.get(source, [])

    def _files_signature(self) -> tuple[tuple[str, int, int, int], ...]:
        signature = []
        for file in catalog_files(self.path) if self.path.exists() else []:
            try:
                st = file.stat()
            except FileNotFoundError:  # deleted between listing and stat
                continue
            signature.append((str(file), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def _reload_if_changed(self) -> None:
        signature = self._files_signature()  # taken before reading: a later write shows next time
        if signature == self._signature:
            return
        try:
            catalog = load_catalog(self.path)
        except Exception:
            logger.exception("could not reload the catalog at %s; keeping the previous sources", self.path)
            return
        self._signature = signature
        self._sources = dict(catalog.sources)
        self._catalog = catalog
        subscribed: dict[str, list[TaskSpec]] = {}
        for task in catalog.tasks.values():
            for source in {s.source for s in task.events}:
                subscribed.setdefault(source, []).append(task)
        self._subscribed = subscribed
        for problem in catalog.problems:
            if problem.kind in ("source", "file"):
                logger.warning("catalog problem: %s", problem)
        logger.info("event sources from %s: %s", self.path, ", ".join(sorted(self._sources)) or "none")


def serve_ingress(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve the ingress in the foreground (for the CLI), storing into the Dagster instance's
    database: the SQLite file under DAGSTER_HOME, or its PostgreSQL."""
    from dagster import DagsterInstance
    from sqlalchemy.engine import make_url

    # Our own INFO lines (one per event), everything else (alembic, dagster) from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    sources = CatalogSources()
    url = url_for_instance(DagsterInstance.get())
    store = StateStore.for_url(url)
    logger.info(
        "ingress on http://%s:%s, catalog %s, events stored in %s",
        host,
        port,
        sources.path,
        make_url(url).render_as_string(hide_password=True),
    )
    from agent_pipelines.access.serving import ingress_access

    access = ingress_access(store, sources)
    app = create_ingress_app(sources, store, access=access)
    try:
        uvicorn.Server(uvicorn_config(app, host=host, port=port, **server_options())).run()
    finally:
        access.close()


def server_options(header_timeout_s: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """uvicorn settings for an ingress facing untrusted clients: a deadline for request headers
    and a bound on open connections (beyond it, 503)."""
    return {"http": guarded_http_protocol(header_timeout_s), "limit_concurrency": MAX_CONNECTIONS}
