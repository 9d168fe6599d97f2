"""The event ingress over real HTTP into a real store, on SQLite and PostgreSQL: what a 2xx
promises (stored and committed), idempotency under concurrency, and refusals that store nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.ingress import UNAUTHORIZED, CatalogSources, create_ingress_app, server_options
from agent_pipelines.store import StateStore, StoredEvent

TOKEN = "ingress-bearer-token"
SECRET = "ingress-hmac-secret"
LIMIT = 2048  # max_body_bytes of the `alerts` source
NOW = 1_800_000_000  # the server's clock at the start of each test

SOURCES_YAML = """\
sources:
  - name: alerts
    auth: {kind: bearer, token_env: INGRESS_TEST_TOKEN}
    type_header: X-Event-Type
    max_body_bytes: 2048
  - name: github
    auth: {kind: hmac, secret_env: INGRESS_TEST_SECRET, format: github}
    type_field: meta.kind
    id_header: X-GitHub-Delivery
  - name: partner
    auth: {kind: hmac, secret_env: INGRESS_TEST_SECRET, tolerance: 5m}
"""


@dataclass
class Ingress:
    server: RunningServer
    store: StateStore  # the server's
    reader: StateStore  # a second engine on the same database: sees only committed rows
    catalog: Path
    now: list[float]  # the server's clock, in unix seconds

    def events(self) -> list[StoredEvent]:
        return self.reader.events_after(0, limit=10_000)


@pytest.fixture
def database_url(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if storage == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def ingress(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ingress]:
    monkeypatch.setenv("INGRESS_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("INGRESS_TEST_SECRET", SECRET)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "sources.yaml").write_text(SOURCES_YAML)
    store, reader = StateStore(database_url), StateStore(database_url)
    now = [float(NOW)]
    app = create_ingress_app(CatalogSources(catalog, min_interval_s=0), store, clock=lambda: now[0], body_timeout_s=1.0)
    try:
        with serve_in_thread(app, name="ingress", **server_options(header_timeout_s=1.0)) as server:
            yield Ingress(server, store, reader, catalog, now)
    finally:
        store.engine.dispose()
        reader.engine.dispose()


@pytest.fixture
def http(ingress: Ingress) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingress.server.url, timeout=10.0) as client:
        yield client


def bearer(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def signed(body: bytes, secret: str = SECRET, **headers: str) -> dict[str, str]:
    """GitHub's format, as the `github` source expects."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json", **headers}


def stamped(body: bytes, key: str = "", at: int | None = None, secret: str = SECRET, **headers: str) -> dict[str, str]:
    """The timestamped format, as the `partner` source expects: `t` and the key are signed."""
    at = NOW if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.{key}.".encode() + body, hashlib.sha256).hexdigest()
    key_header = {"Idempotency-Key": key} if key else {}
    return {"X-Signature": f"t={at},v1={digest}", **key_header, **headers}


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` as is and read until the server closes or the response headers end."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


# --- accepted events ---------------------------------------------------------------------------


def test_accepted_event_is_committed_when_the_2xx_arrives(ingress: Ingress, http: httpx.Client) -> None:
    response = http.post(
        "/events/alerts", json={"type": "disk_full", "host": "db1"}, headers=bearer(**{"Idempotency-Key": "a-1"})
    )
    stored = ingress.reader.get_event("alerts:a-1")  # right away, through another connection
    assert response.status_code == 202, response.text
    assert response.json() == {"id": "alerts:a-1", "seq": stored.seq if stored else None, "duplicate": False}
    assert stored is not None
    assert (stored.source, stored.type, stored.payload) == ("alerts", "disk_full", {"type": "disk_full", "host": "db1"})


def test_github_signed_events_are_keyed_by_their_signature(ingress: Ingress, http: httpx.Client) -> None:
    body = json.dumps({"meta": {"kind": "push"}, "ref": "main"}).encode()
    response = http.post("/events/github", content=body, headers=signed(body, **{"X-GitHub-Delivery": "d-42"}))
    assert response.status_code == 202, response.text
    event_id = response.json()["id"]
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert event_id == f"github:sig-{digest[:40]}"  # the unsigned delivery header is not trusted
    stored = ingress.reader.get_event(event_id)
    assert stored is not None and stored.type == "push" and stored.payload["ref"] == "main"
    # A captured request replayed, even under another delivery id, is the same event.
    replay = http.post("/events/github", content=body, headers=signed(body, **{"X-GitHub-Delivery": "d-43"}))
    assert replay.status_code == 200 and replay.json() == {**response.json(), "duplicate": True}
    assert len(ingress.events()) == 1


def test_timestamped_signatures_bind_time_and_key(ingress: Ingress, http: httpx.Client) -> None:
    body = b'{"type": "invoice.paid", "amount": 10}'
    first = http.post("/events/partner", content=body, headers=stamped(body, key="inv-1"))
    assert first.status_code == 202 and first.json()["id"] == "partner:inv-1", first.text
    # The same request replayed within the tolerance: a duplicate.
    assert http.post("/events/partner", content=body, headers=stamped(body, key="inv-1")).status_code == 200
    # Replayed under another key: the key is signed, so the signature no longer matches.
    forged = stamped(body, key="inv-1") | {"Idempotency-Key": "inv-2"}
    assert http.post("/events/partner", content=body, headers=forged).status_code == 401
    # Unkeyed: the signature stands for the key, so a replay is a duplicate too.
    unkeyed = [http.post("/events/partner", content=body, headers=stamped(body)) for _ in range(2)]
    assert [r.status_code for r in unkeyed] == [202, 200]
    assert unkeyed[0].json()["id"].startswith("partner:sig-")
    # Replayed after the tolerance: refused, telling the sender what to do.
    ingress.now[0] += 301
    stale = http.post("/events/partner", content=body, headers=stamped(body, key="inv-9"))
    assert stale.status_code == 401 and "sign the request again" in stale.json()["error"]
    ingress.now[0] -= 602  # and a signature from the future alike
    assert http.post("/events/partner", content=body, headers=stamped(body, key="inv-9")).status_code == 401
    assert sorted(e.event_id for e in ingress.events()) == sorted(["partner:inv-1", unkeyed[0].json()["id"]])


def test_idempotency_key_dedupes_per_source(ingress: Ingress, http: httpx.Client) -> None:
    first = http.post("/events/alerts", json={"type": "t", "n": 1}, headers=bearer(**{"Idempotency-Key": "k"}))
    again = http.post("/events/alerts", json={"type": "t", "n": 2}, headers=bearer(**{"Idempotency-Key": "k"}))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {"id": "alerts:k", "seq": first.json()["seq"], "duplicate": True}
    assert [e.payload["n"] for e in ingress.events()] == [1]  # one row: the first one wins

    body = b'{"type": "x"}'  # the same key from another source is another event
    other = http.post("/events/partner", content=body, headers=stamped(body, key="k"))
    assert other.status_code == 202 and other.json()["id"] == "partner:k"

    # Without a key every post is a new event.
    fresh = {http.post("/events/alerts", json={"type": "t"}, headers=bearer()).json()["id"] for _ in range(3)}
    assert len(fresh) == 3 and all(i.startswith("alerts:") for i in fresh)
    assert len(ingress.events()) == 5


def test_type_header_wins_over_the_body(ingress: Ingress, http: httpx.Client) -> None:
    with_header = http.post(
        "/events/alerts", json={"type": "from_body"}, headers=bearer(**{"X-Event-Type": "from_header"})
    )
    without = http.post("/events/alerts", json={"type": "from_body"}, headers=bearer())
    assert ingress.reader.get_event(with_header.json()["id"]).type == "from_header"  # type: ignore[union-attr]
    assert ingress.reader.get_event(without.json()["id"]).type == "from_body"  # type: ignore[union-attr]


def test_concurrent_posts_with_repeated_keys_lose_nothing_and_store_each_key_once(ingress: Ingress) -> None:
    # 200 posts: 100 keys sent once, 25 keys sent four times (all in flight together).
    keys = [f"once-{i}" for i in range(100)] + [f"rep-{i}" for i in range(25) for _ in range(4)]

    async def post_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=ingress.server.url, timeout=30.0, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post("/events/alerts", json={"type": "t", "key": key}, headers=bearer(**{"Idempotency-Key": key}))
                    for key in keys
                )
            )

    responses = asyncio.run(post_all())
    assert sorted({r.status_code for r in responses}) == [200, 202], {r.status_code for r in responses}
    by_key: dict[str, list[dict[str, Any]]] = {}
    for key, response in zip(keys, responses):
        by_key.setdefault(key, []).append(response.json())
    for key, answers in by_key.items():
        assert sum(not a["duplicate"] for a in answers) == 1, (key, answers)  # exactly one 202
        assert len({a["seq"] for a in answers}) == 1, (key, answers)
    events = ingress.events()
    assert sorted(e.event_id for e in events) == sorted(f"alerts:{k}" for k in by_key)
    assert all(e.payload["key"] == e.event_id.removeprefix("alerts:") for e in events)


# --- refusals store nothing --------------------------------------------------------------------


def chunked(body: bytes, size: int = 512) -> Iterable[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


GOOD = json.dumps({"meta": {"kind": "push"}}).encode()
BIG = json.dumps({"type": "t", "pad": "x" * (2 * LIMIT)}).encode()

# name: (source, headers, body, status, words the error must contain)
REFUSALS: dict[str, tuple[str, dict[str, str], Any, int, str]] = {
    # Unknown sources and every credential failure get one answer: a prober learns nothing.
    "unknown source": ("nope", bearer(), b'{"type": "t"}', 401, UNAUTHORIZED),
    "wrong token": ("alerts", {"Authorization": "Bearer nope"}, b'{"type": "t"}', 401, UNAUTHORIZED),
    "missing token": ("alerts", {}, b'{"type": "t"}', 401, UNAUTHORIZED),
    "basic auth instead of bearer": ("alerts", {"Authorization": "Basic dTpw"}, b'{"type": "t"}', 401, UNAUTHORIZED),
    "wrong signature": ("github", signed(GOOD, secret="other"), GOOD, 401, UNAUTHORIZED),
    "missing signature": ("github", {}, GOOD, 401, UNAUTHORIZED),
    "signature over a different body": ("github", signed(b'{"meta": {}}'), GOOD, 401, UNAUTHORIZED),
    "timestamped signature missing its time": ("partner", {"X-Signature": "v1=00"}, b'{"type": "t"}', 401, UNAUTHORIZED),
    "timestamped signature with a wrong secret": ("partner", stamped(b'{"type": "t"}', secret="x"), b'{"type": "t"}', 401, UNAUTHORIZED),
    "too many headers": ("alerts", bearer(**{f"X-Pad-{i}": "x" for i in range(100)}), b'{"type": "t"}', 431, "request headers too large"),
    "headers too large": ("alerts", bearer(**{"X-Pad": "x" * 17_000}), b'{"type": "t"}', 431, "request headers too large"),
    "JSON nested too deep": ("alerts", bearer(), b'{"type": "t", "x": ' + b"[" * 65 + b"]" * 65 + b"}", 400, "deeper than 64 levels"),
    "bad JSON": ("alerts", bearer(), b'{"type": ', 400, "not valid JSON"),
    "not UTF-8": ("alerts", bearer(), b'{"type": "\xff"}', 400, "not valid JSON: it is not UTF-8"),
    "NaN": ("alerts", bearer(), b'{"type": "t", "x": NaN}', 400, "not valid JSON: NaN"),
    "JSON array": ("alerts", bearer(), b'[{"type": "t"}]', 400, "must be a JSON object, got a JSON list"),
    "missing type": ("github", signed(b'{"kind": "push"}'), b'{"kind": "push"}', 400, "field 'meta.kind'"),
    "type too long": ("alerts", bearer(), json.dumps({"type": "t" * 256}).encode(), 400, "at most 255 characters"),
    "type not a string": ("alerts", bearer(), b'{"type": 7}', 400, "field 'type' of the body must be a non-empty string"),
    "empty type header": ("alerts", bearer(**{"X-Event-Type": ""}), b'{"type": "t"}', 400, "header X-Event-Type"),
    "key too long": ("alerts", bearer(**{"Idempotency-Key": "k" * 201}), b'{"type": "t"}', 400, "Idempotency-Key must be 1 to 200"),
    "key not printable": ("alerts", bearer(**{"Idempotency-Key": "a\tb"}), b'{"type": "t"}', 400, "printable ASCII"),
    "oversized with Content-Length": ("alerts", bearer(), BIG, 413, f"limit of {LIMIT} bytes"),
    "oversized chunked": ("alerts", bearer(), "chunked", 413, f"limit of {LIMIT} bytes"),
}


def test_refusals_store_nothing(ingress: Ingress, http: httpx.Client) -> None:
    # One server for all the cases (a server and a database per case would cost ~0.5 s each).
    http.post("/events/alerts", json={"type": "seed"}, headers=bearer())  # the table is not empty
    failures = []
    for case, (source, headers, body, status, words) in REFUSALS.items():
        before = ingress.events()
        content = chunked(BIG) if body == "chunked" else body
        response = http.post(f"/events/{source}", content=content, headers=headers)
        error = response.json().get("error", "") if response.headers.get("content-type") == "application/json" else ""
        if response.status_code != status or words not in error:
            failures.append(f"{case}: expected {status} with {words!r}, got {response.status_code} {response.text}")
        if status == 401 and source in ("alerts", "nope") and not response.headers.get("WWW-Authenticate", "").startswith("Bearer"):
            failures.append(f"{case}: no WWW-Authenticate: Bearer header")
        if ingress.events() != before:
            failures.append(f"{case}: the events table changed")
    assert not failures, "\n".join(failures)


def test_oversized_bodies_are_refused_without_waiting_for_them(ingress: Ingress) -> None:
    head = f"POST /events/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    # Declared too large and never sent: refused from Content-Length alone.
    declared = raw_exchange(ingress.server.url, f"{head}Content-Length: 10000000\r\n\r\n".encode())
    assert declared.startswith(b"HTTP/1.1 413"), declared
    # Streamed: one chunk past the limit and no terminating chunk, the sender is still "sending".
    part = b"x" * (LIMIT + 1)
    streamed = raw_exchange(
        ingress.server.url,
        f"{head}Transfer-Encoding: chunked\r\n\r\n{len(part):x}\r\n".encode() + part + b"\r\n",
    )
    assert streamed.startswith(b"HTTP/1.1 413"), streamed
    assert ingress.events() == []


def test_slow_clients_are_cut_off_and_do_not_block_others(ingress: Ingress, http: httpx.Client) -> None:
    # The fixture's deadlines: headers within 1 s of connecting, the body within 1 s of them.
    host, port = ingress.server.url.removeprefix("http://").rsplit(":", 1)
    trickling = socket.create_connection((host, int(port)), timeout=10)
    trickling.sendall(b"POST /events/alerts HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    slow_body = socket.create_connection((host, int(port)), timeout=10)
    slow_body.sendall(
        f"POST /events/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    # Meanwhile others are served.
    assert http.post("/events/alerts", json={"type": "t"}, headers=bearer()).status_code == 202
    assert trickling.recv(1024) == b""  # closed by the server, no answer owed
    answer = slow_body.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer, answer
    trickling.close()
    slow_body.close()
    assert len(ingress.events()) == 1


def test_missing_secret_on_the_server_is_503_naming_the_variable(
    ingress: Ingress, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INGRESS_TEST_TOKEN")
    monkeypatch.delenv("INGRESS_TEST_SECRET")
    for source, headers, body in (("alerts", bearer(), b'{"type": "t"}'), ("github", signed(GOOD), GOOD)):
        response = http.post(f"/events/{source}", content=body, headers=headers)
        assert response.status_code == 503
        assert ("INGRESS_TEST_TOKEN" if source == "alerts" else "INGRESS_TEST_SECRET") in response.json()["error"]
    assert ingress.events() == []


def test_other_methods_and_paths_get_json_errors(ingress: Ingress, http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    get = http.get("/events/alerts")
    assert get.status_code == 405 and get.headers["Allow"] == "POST" and "use POST" in get.json()["error"]
    missing = http.get("/nowhere")
    assert missing.status_code == 404 and "POST /events/{source}" in missing.json()["error"]


def test_logs_name_the_refusal_but_never_the_secrets(
    ingress: Ingress, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_pipelines.ingress")
    http.post("/events/alerts", json={"type": "t"}, headers={"Authorization": "Bearer presented-guess"})
    http.post("/events/alerts", json={"type": "t"}, headers=bearer(**{"Idempotency-Key": "logged"}))
    assert "bearer token missing or wrong" in caplog.text and "alerts:logged" in caplog.text
    assert TOKEN not in caplog.text and "presented-guess" not in caplog.text


def test_longest_keys_and_types_fit_the_table(ingress: Ingress, http: httpx.Client) -> None:
    # event_id is `<source>:<key>` in a 255-character column: a long source name leaves less room.
    long_source = "s" * 60
    (ingress.catalog / "long.yaml").write_text(
        f"sources:\n  - name: {long_source}\n    auth: {{kind: bearer, token_env: INGRESS_TEST_TOKEN}}\n"
    )
    room = 255 - len(long_source) - 1
    cases = [("alerts", "k" * 200, 202), (long_source, "k" * room, 202), (long_source, "k" * (room + 1), 400)]
    for source, key, status in cases:
        response = http.post(
            f"/events/{source}", json={"type": "t" * 255}, headers=bearer(**{"Idempotency-Key": key})
        )
        assert response.status_code == status, (source, len(key), response.text)
    assert f"1 to {room} printable ASCII" in response.json()["error"]
    assert len(ingress.events()) == 2


def test_a_failing_store_answers_503_and_never_2xx(ingress: Ingress, http: httpx.Client) -> None:
    with ingress.reader.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE agent_pipelines_events"))
    response = http.post("/events/alerts", json={"type": "t"}, headers=bearer(**{"Idempotency-Key": "k"}))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "retry with the same Idempotency-Key header" in response.json()["error"]


# --- catalog changes ---------------------------------------------------------------------------


def test_catalog_reload_adds_and_removes_sources(ingress: Ingress, http: httpx.Client) -> None:
    assert http.post("/events/deploys", json={"type": "t"}, headers=bearer()).status_code == 401
    extra = ingress.catalog / "deploys.yaml"
    extra.write_text(
        textwrap.dedent(
            """\
            sources:
              - name: deploys
                auth: {kind: bearer, token_env: INGRESS_TEST_TOKEN}
            """
        )
    )
    assert http.post("/events/deploys", json={"type": "done"}, headers=bearer()).status_code == 202
    extra.unlink()
    assert http.post("/events/deploys", json={"type": "t"}, headers=bearer()).status_code == 401


def test_catalog_is_checked_at_most_every_interval(tmp_path: Path) -> None:
    (tmp_path / "sources.yaml").write_text(SOURCES_YAML)
    now = [100.0]
    sources = CatalogSources(tmp_path, min_interval_s=2.0, clock=lambda: now[0])
    assert set(sources()) == {"alerts", "github", "partner"}
    (tmp_path / "sources.yaml").write_text(SOURCES_YAML.split("  - name: github")[0])
    now[0] += 1.9
    assert set(sources()) == {"alerts", "github", "partner"}  # not looked at yet
    now[0] += 0.1
    assert set(sources()) == {"alerts"}


def test_a_broken_catalog_file_drops_only_its_broken_source(tmp_path: Path) -> None:
    (tmp_path / "sources.yaml").write_text(SOURCES_YAML)
    sources = CatalogSources(tmp_path, min_interval_s=0)
    (tmp_path / "sources.yaml").write_text(SOURCES_YAML.replace("kind: hmac", "kind: hmca"))
    assert set(sources()) == {"alerts"}
