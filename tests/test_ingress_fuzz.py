"""Hostile input against a running ingress (Hypothesis): whatever arrives, the server answers
with a 2xx only for what it stored, a JSON error otherwise, never a 5xx, and keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.ingress import CatalogSources, create_ingress_app, server_options
from agent_pipelines.store import StateStore

TOKEN = "fuzz-token"
SOURCES_YAML = """\
sources:
  - name: alerts
    auth: {kind: bearer, token_env: FUZZ_INGRESS_TOKEN}
    max_body_bytes: 4096
  - name: hooks
    auth: {kind: hmac, secret_env: FUZZ_INGRESS_TOKEN, format: github}
"""
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Target:
    def __init__(self, server: RunningServer, store: StateStore) -> None:
        self.server = server
        self.store = store
        self.accepted: set[str] = set()

    def stored_ids(self) -> set[str]:
        return {e.event_id for e in self.store.events_after(0, limit=100_000)}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    mp = pytest.MonkeyPatch()
    mp.setenv("FUZZ_INGRESS_TOKEN", TOKEN)
    root: Path = tmp_path_factory.mktemp("fuzz")
    (root / "sources.yaml").write_text(SOURCES_YAML)
    store = StateStore(f"sqlite:///{root / 'events.db'}")
    app = create_ingress_app(CatalogSources(root, min_interval_s=60), store, body_timeout_s=2.0)
    try:
        with serve_in_thread(app, name="fuzz-ingress", **server_options(header_timeout_s=2.0)) as server:
            yield Target(server, store)
    finally:
        store.engine.dispose()
        mp.undo()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=6000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(lambda d: json.dumps({"type": "t", **d}).encode()),
    st.integers(min_value=1, max_value=5000).map(lambda n: b'{"type": "t", "x": ' + b"[" * n + b"]" * n + b"}"),
)
# (httpx itself refuses header values with surrounding spaces)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(str.strip)
headers = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "X-Hub-Signature-256", "Content-Type", "X-Event-Type", "X-Anything"]),
    header_text,
    max_size=4,
)
auth = st.sampled_from([{"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong"}, {}])
paths = st.sampled_from(["/events/alerts", "/events/hooks", "/events/nope", "/events/", "/events/alerts/x", "/health"])
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"])


@FUZZ
@given(method=methods, path=paths, auth_headers=auth, extra=headers, body=bodies)
def test_any_request_gets_a_clear_answer_and_only_2xx_stores(
    target: Target, method: str, path: str, auth_headers: dict[str, str], extra: dict[str, str], body: bytes
) -> None:
    before = target.stored_ids()
    with httpx.Client(base_url=target.server.url, timeout=10.0) as client:
        response = client.request(method, path, content=body, headers={**extra, **auth_headers})
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    after = target.stored_ids()
    if response.status_code in (200, 202):
        if path == "/health":
            return
        event_id = response.json()["id"]
        assert event_id in after and (response.status_code == 200) == (event_id in before)
        assert after - before == ({event_id} if response.status_code == 202 else set())
    else:
        assert "error" in response.json() and after == before


@FUZZ
@given(raw=st.binary(min_size=1, max_size=2000))
def test_garbage_on_the_socket_never_takes_the_server_down(target: Target, raw: bytes) -> None:
    host, port = target.server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].split(b" ")
    assert answer == b"" or (status_line[0] == b"HTTP/1.1" and status_line[1] < b"500"), answer[:200]
    assert httpx.get(f"{target.server.url}/health", timeout=10).status_code == 200
