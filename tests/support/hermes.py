"""The real Hermes Agent API server (PyPI `hermes-agent` 0.19.0) on 127.0.0.1, behind the fake LLM.

Install: `ensure_hermes()` puts hermes-agent==0.19.0 (+ aiohttp, which the API server needs but
the package does not require) in a venv outside the repository,
`$AGENT_PIPELINES_GATEWAY_CACHE/hermes-agent-0.19.0` (default parent
`~/.cache/agent-pipelines/gateways`), under a file lock, once; it returns the venv's `hermes`
script. The first install downloads ~75 packages (~240 MB venv; 1-2 min here).

Start: `run_hermes(home, llm)` runs `hermes gateway run` in its own process group with
HOME=`home`, HERMES_HOME=`home/hermes`, cwd=`home/work`, and a clean environment (no provider
keys of the caller leak in). The API server is the only platform: API_SERVER_ENABLED=true,
API_SERVER_HOST=127.0.0.1, API_SERVER_PORT=<free port>, API_SERVER_KEY=<api_key>. Hermes
refuses to start with a key shorter than 16 characters or a placeholder ("changeme", ...).
`home/hermes/config.yaml` points the model at the fake LLM (`model.provider: custom`,
`model.base_url`, `model.default: fake-model`, `model.context_length` so no metadata probe runs)
and turns off what would reach the network or add model calls: tirith (its security scanner,
otherwise downloaded from GitHub at start), the environment probe, the agent's tools
(`platform_toolsets.api_server: []`), compression and session-title generation. Ready when
`GET /health` answers (no key needed); start-up takes ~3-6 s.

What Hermes stores under HERMES_HOME: `state.db` (SQLite, WAL): table `sessions` (one row per
session id, `source='api_server'`, system prompt, token counts) and table `messages`
(`session_id`, `role`, `content`, `timestamp`, tool calls; ordered by `id`) -- the transcript
`X-Hermes-Session-Id` continues; `response_store.db` (the /v1/responses chain); `cron/jobs.json`
(its own cron jobs); `logs/{agent,gateway,errors}.log`; `gateway.pid`, `gateway_state.json`.
`RunningHermes.sessions()` / `.transcript(id)` read `state.db` read-only; the same data is served
at `GET /api/sessions` and `GET /api/sessions/{id}/messages` (key required).

Facts pinned by tests/test_hermes_gateway.py: auth is `Authorization: Bearer <key>`, else 401
`{"error": {"message": "Invalid API key", "type": "invalid_request_error", "code":
"invalid_api_key"}}`; `/health` needs no key, `/v1/models` does. Every chat response (plain or
SSE) carries `X-Hermes-Session-Id`. A caller-chosen new id becomes the session id as is (<= 256
chars; no CR/LF/NUL, "/", "\\", "..", nor a letter+":" start), and with it the body's earlier
messages are ignored: history comes from state.db. Without the header the id is `api-` +
sha256(system prompt + "\n" + first user message)[:16]: repeats land in one session row but the
model sees only the request's own messages. A failed model call is HTTP 200 with
`finish_reason: "error"`, a `hermes` object and `X-Hermes-Completed: false` (not 502); its user
message stays stored unanswered, so a retry under the same id sends the prompt twice. Concurrent
turns on one session id are neither serialized nor rejected: each runs on the transcript as
stored when it arrived and both append to it, interleaved; only the global in-flight cap
(`gateway.api_server.max_concurrent_runs`, default 10) answers 429.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from agent_pipelines.local_platform import free_port
from agent_pipelines.http_server import serve_in_thread
from tests.support.fake_llm import FakeLlmState, RunningFakeLlm, create_app

HERMES_VERSION = "0.19.0"
# The API server adapter imports aiohttp, which hermes-agent only pulls in through extras
# (messaging, sms, ...); this is the version those extras pin.
EXTRA_REQUIREMENTS = ("aiohttp==3.14.1",)
CACHE_ENV = "AGENT_PIPELINES_GATEWAY_CACHE"
# Hermes refuses an API_SERVER_KEY shorter than 16 characters (hermes_cli.auth.has_usable_secret).
DEFAULT_API_KEY = "hermes-test-key-0123456789"
MIN_API_KEY_LENGTH = 16
FAKE_LLM_KEY = "fake-llm-key"
STARTUP_TIMEOUT_S = 90.0
INSTALL_TIMEOUT_S = 1200.0
_INSTALLED_MARKER = ".agent-pipelines-installed"


def gateway_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "agent-pipelines" / "gateways"


def hermes_venv_dir() -> Path:
    return gateway_cache_dir() / f"hermes-agent-{HERMES_VERSION}"


def _hermes_executable(venv: Path) -> Path:
    return venv / "bin" / "hermes"


def _installed(venv: Path) -> bool:
    marker = venv / _INSTALLED_MARKER
    return marker.is_file() and marker.read_text().strip() == HERMES_VERSION and _hermes_executable(venv).is_file()


def _base_python() -> str:
    """A real interpreter (not this venv's) to build the cache venv from; Hermes needs 3.11-3.13."""
    base = Path(getattr(sys, "_base_executable", "") or sys.executable)
    return str(base if base.exists() else sys.executable)


def ensure_hermes() -> Path:
    """Install hermes-agent into the cache venv once (idempotent, cross-process safe); its `hermes`."""
    venv = hermes_venv_dir()
    if _installed(venv):
        return _hermes_executable(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv.parent / f"{venv.name}.lock"), timeout=INSTALL_TIMEOUT_S + 60):
        if _installed(venv):
            return _hermes_executable(venv)
        if venv.exists():  # a half-finished earlier attempt
            shutil.rmtree(venv)
        log = venv.parent / f"{venv.name}.install.log"
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
        with log.open("w") as out:
            for command in (
                [_base_python(), "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 f"hermes-agent=={HERMES_VERSION}", *EXTRA_REQUIREMENTS],
            ):
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        timeout=INSTALL_TIMEOUT_S, check=False)
                if result.returncode != 0:
                    raise RuntimeError(f"installing hermes-agent failed ({' '.join(command)}); see {log}:\n"
                                       + log.read_text()[-4000:])
        if not _hermes_executable(venv).is_file():
            raise RuntimeError(f"hermes-agent installed but {_hermes_executable(venv)} is missing; see {log}")
        (venv / _INSTALLED_MARKER).write_text(HERMES_VERSION + "\n")
    return _hermes_executable(venv)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def config_yaml(llm_base_url: str, extra_config: dict[str, Any] | None = None) -> str:
    """Hermes' config.yaml: the fake LLM as the only model, nothing that reaches past loopback."""
    config: dict[str, Any] = {
        "model": {
            "provider": "custom",
            "base_url": llm_base_url,
            "api_key": FAKE_LLM_KEY,
            "default": "fake-model",
            # Known context length: no /models probe or models.dev/OpenRouter metadata lookup.
            "context_length": 131072,
        },
        # No tools: the fake model never calls one, and none can touch the host or network.
        "platform_toolsets": {"api_server": []},
        # tirith (command scanner) is otherwise downloaded from GitHub releases at start-up.
        "security": {"tirith_enabled": False},
        # The environment probe shells out to python3/pip/uv on every new agent.
        "agent": {"environment_probe": False, "api_max_retries": 1},
        # Both would add model calls of their own to the fake LLM's record.
        "compression": {"enabled": False},
        "auxiliary": {"title_generation": {"enabled": False}},
    }
    return json.dumps(_merge(config, extra_config or {}), indent=2) + "\n"  # JSON is YAML


@dataclass
class RunningHermes:
    url: str
    api_key: str
    home: Path
    hermes_home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in_s: float
    client: httpx.Client = field(repr=False)

    @property
    def state_db(self) -> Path:
        return self.hermes_home / "state.db"

    def headers(self, session_id: str | None = None, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}", **extra}
        if session_id is not None:
            headers["X-Hermes-Session-Id"] = session_id
        return headers

    def chat(
        self,
        messages: list[dict[str, Any]] | str,
        *,
        session_id: str | None = None,
        timeout: float = 60.0,
        **body: Any,
    ) -> httpx.Response:
        """POST /v1/chat/completions (a plain string is one user message)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        payload = {"model": "hermes-agent", "messages": messages, **body}
        return self.client.post("/v1/chat/completions", json=payload, headers=self.headers(session_id),
                                timeout=timeout)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.state_db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def sessions(self) -> list[dict[str, Any]]:
        """Rows of state.db `sessions`, oldest first (id, source, message_count, tokens, ...)."""
        return self._query(
            "SELECT id, source, model, parent_session_id, started_at, ended_at, end_reason, message_count,"
            " input_tokens, output_tokens, api_call_count, title FROM sessions ORDER BY started_at, id"
        )

    def session_ids(self) -> list[str]:
        return [row["id"] for row in self.sessions()]

    def transcript(self, session_id: str) -> list[dict[str, Any]]:
        """The messages Hermes stored for one session, in insertion order."""
        return self._query(
            "SELECT id, role, content, tool_calls, tool_name, timestamp, finish_reason, active"
            " FROM messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        )

    def log_text(self) -> str:
        parts = [self.log_path]
        parts += sorted((self.hermes_home / "logs").glob("*.log")) if (self.hermes_home / "logs").exists() else []
        return "\n".join(f"== {p.name} ==\n{p.read_text(errors='replace')}" for p in parts if p.exists())


def _environment(home: Path, hermes_home: Path, port: int, api_key: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(home),
        "HERMES_HOME": str(hermes_home),
        "TMPDIR": str(home / "tmp"),
        "API_SERVER_ENABLED": "true",
        "API_SERVER_HOST": "127.0.0.1",
        "API_SERVER_PORT": str(port),
        "API_SERVER_KEY": api_key,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    return env


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Anything of the group still alive (children that ignored SIGTERM).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_ready(process: subprocess.Popen[bytes], client: httpx.Client, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hermes gateway exited with {process.returncode}:\n{log_path.read_text()[-6000:]}")
        try:
            if client.get("/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"hermes API server not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-6000:]}")


@contextmanager
def run_hermes(
    home: Path, llm: Any, *, api_key: str = DEFAULT_API_KEY, extra_config: dict[str, Any] | None = None
) -> Iterator[RunningHermes]:
    """Run the Hermes API server with its state in `home/hermes`, the model being `llm.base_url`.

    `extra_config` is merged into the generated config.yaml (e.g.
    `{"gateway": {"api_server": {"max_concurrent_runs": 2}}}`).
    """
    if len(api_key.strip()) < MIN_API_KEY_LENGTH:
        raise ValueError(f"Hermes refuses API_SERVER_KEY shorter than {MIN_API_KEY_LENGTH} characters")
    hermes = ensure_hermes()
    home = Path(home).resolve()
    hermes_home = home / "hermes"
    for directory in (hermes_home, home / "work", home / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    (hermes_home / "config.yaml").write_text(config_yaml(llm.base_url, extra_config))
    log_path = home / "hermes-gateway.log"

    last_error: Exception | None = None
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(hermes), "gateway", "run"],
                cwd=home / "work",
                env=_environment(home, hermes_home, port, api_key),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = httpx.Client(base_url=url, timeout=60.0, trust_env=False)
        try:
            _wait_ready(process, client, log_path)
        except (RuntimeError, TimeoutError) as exc:
            _stop(process)
            client.close()
            last_error = exc
            if "Could not bind" in log_path.read_text(errors="replace")[log_offset:]:
                continue
            raise
        running = RunningHermes(url, api_key, home, hermes_home, process, log_path,
                                time.monotonic() - started, client)
        try:
            yield running
        finally:
            client.close()
            _stop(process)
        return
    raise RuntimeError(f"hermes API server did not start: {last_error}")


class SwitchableFakeLlm(RunningFakeLlm):
    """tests/support/fake_llm.py's server behind a switch that can make the model fail.

    While `failing(...)` is active, chat completions answer with that HTTP status and an OpenAI
    error body instead of reaching the fake (those requests land in `.failures`, not `.calls()`).
    A 400 is not retried by Hermes, so a failed turn costs one request and well under a second.
    """

    failure: tuple[int, str] | None = None
    failures: list[dict[str, Any]]

    @contextmanager
    def failing(self, status: int = 400, message: str = "fake model failure") -> Iterator[None]:
        self.failure = (status, message)
        try:
            yield
        finally:
            self.failure = None


@contextmanager
def run_switchable_fake_llm(latency_s: float = 0.0) -> Iterator[SwitchableFakeLlm]:
    state = FakeLlmState(latency_s=latency_s)
    inner = create_app(state)
    holder: dict[str, SwitchableFakeLlm] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        llm = holder.get("llm")
        failure = llm.failure if llm is not None else None
        if scope["type"] == "http" and failure is not None and scope["path"].endswith("/chat/completions"):
            request = Request(scope, receive)
            llm.failures.append({"path": scope["path"], "body": await request.json(), "at": time.time()})
            status, message = failure
            response = JSONResponse({"error": {"message": message, "type": "fake_failure"}}, status_code=status)
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    server = serve_in_thread(app, name="switchable-fake-llm")
    llm = SwitchableFakeLlm(server.server, server.thread, server.host, server.port)
    llm.state = state
    llm.failures = []
    holder["llm"] = llm
    try:
        yield llm
    finally:
        llm.stop()
