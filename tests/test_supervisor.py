"""`agent-pipelines up` keeps its parts running: SIGKILL the daemon, the code server, the webserver
or the ingress and it is restarted (the terminal says so) while the others keep serving, and
tasks keep firing; Ctrl-C still stops everything within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent_pipelines.failover import DAEMON_ROLE
from agent_pipelines.instance import POSTGRES_URL_ENV
from agent_pipelines.local_platform import RUN_WORKER_MARK, free_port, processes_of, signal_processes, wait_until
from agent_pipelines.store import StateStore, status
from agent_pipelines.store.base import STATE_DB_FILENAME
from tests.conftest import write_catalog

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
TASKS = """\
sources:
  - {name: hooks, auth: {kind: bearer, token_env: DEMO_INGRESS_TOKEN}}
tasks:
  - {name: pulse, owner: ops, agent: demo, prompt: "pulse {{ due_time.isoformat() }}", schedule: {every: 2s}}
"""


@dataclass
class Up:
    process: subprocess.Popen[str]
    home: Path
    ports: dict[str, int]
    store_url: str
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self, mark: bytes) -> list[int]:
        return processes_of(self.home, mark)

    def succeeded_after(self, moment: float) -> int:
        if self.store_url.startswith("sqlite") and not (self.home / STATE_DB_FILENAME).exists():
            return 0
        store = StateStore(self.store_url)
        try:
            return sum(
                1
                for e in store.executions_for_task("pulse", limit=10_000)
                if e.status == status.SUCCEEDED and e.due_time is not None and e.due_time.timestamp() > moment
            )
        finally:
            store.engine.dispose()


@contextmanager
def running_up(tmp_path: Path, *args: str, **env: str) -> Iterator[Up]:
    ports = {name: free_port() for name in ("ui", "code", "agent", "ingress")}
    catalog = write_catalog(tmp_path / "catalog", f"http://127.0.0.1:{ports['agent']}", TASKS)
    home = tmp_path / "home"
    environment = {**os.environ, "DAGSTER_HOME": str(home), "AGENT_PIPELINES_CATALOG": str(catalog), "DEMO_AGENT_TOKEN": "demo-local-token", **env}
    if POSTGRES_URL_ENV not in env:
        environment.pop(POSTGRES_URL_ENV, None)
    process = subprocess.Popen(
        [str(BIN / "agent-pipelines"), "up", "--port", str(ports["ui"]), "--code-server-port", str(ports["code"]),
         "--demo-agent-port", str(ports["agent"]), "--ingress-port", str(ports["ingress"]), *args],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    running = Up(process, home, ports, env.get(POSTGRES_URL_ENV) or f"sqlite:///{home / STATE_DB_FILENAME}")

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.lines.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    try:
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        signal_processes(processes_of(home))


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    with running_up(tmp_path) as running:
        yield running


def _fires_after(up: Up, moment: float, what: str) -> None:
    wait_until(lambda: up.succeeded_after(moment) >= 3, timeout_s=180, message=f"pulses after {what}\n{up.output()}")


def test_up_restarts_each_part_that_dies_and_the_rest_keeps_running(up: Up) -> None:
    ui = f"http://127.0.0.1:{up.ports['ui']}/server_info"
    ingress = f"http://127.0.0.1:{up.ports['ingress']}/health"
    wait_until(lambda: up.succeeded_after(0) >= 3, timeout_s=240, message=f"the first pulses\n{up.output()}")

    for name, mark in (("daemon", b"dagster-daemon"), ("code server", b"code-server\0start"), ("ingress", b"\0ingress\0"), ("webserver", b"\0webserver\0")):
        victims = [pid for pid in up.pids(mark) if RUN_WORKER_MARK not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert victims, f"no {name} process found"
        killed_at = time.time()
        signal_processes(victims)
        wait_until(
            lambda: any(f"{name} exited with code -9; restarting it" in line for line in up.lines),
            timeout_s=30,
            message=f"the supervisor noticing the {name}\n{up.output()}",
        )
        wait_until(lambda: set(up.pids(mark)) - set(victims), timeout_s=60, message=f"a new {name}")
        if name == "ingress":
            wait_until(lambda: _ok(ingress), timeout_s=60, message="the ingress answering again")
        if name == "webserver":
            wait_until(lambda: _ok(ui), timeout_s=120, message="the UI answering again")
        else:
            assert _ok(ui) or name == "code server", f"the webserver stopped serving when the {name} died"
        _fires_after(up, killed_at + 2, f"the {name} was killed")
    assert up.process.poll() is None

    # Ctrl-C stops everything within seconds.
    os.killpg(up.process.pid, signal.SIGINT)
    stopped_at = time.time()
    up.process.wait(timeout=60)
    assert time.time() - stopped_at < 30
    assert "stopped" in up.output()
    wait_until(lambda: not up.pids(b""), timeout_s=30, message="every process of the platform gone")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_production_fails_over_between_two_daemons_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    policy = str(Path(__file__).resolve().parents[1] / "deploy" / "policy.yaml")  # --production needs one
    with running_up(tmp_path, "--production", **{POSTGRES_URL_ENV: postgres_url, "AGENT_PIPELINES_POLICY": policy}) as up:
        wait_until(lambda: up.succeeded_after(0) >= 3, timeout_s=240, message=f"the first pulses\n{up.output()}")
        store = StateStore(postgres_url)
        try:
            first = store.leadership_terms(DAEMON_ROLE, limit=1)[0]
            active = first.holder.rsplit("(", 1)[1].rstrip(")")
            wrapper = [pid for pid in up.pids(f"--name\0{active}\0".encode()) if b"daemon" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            assert len(wrapper) == 1, wrapper
            killed_at = time.time()
            signal_processes(wrapper)
            wait_until(
                lambda: store.leadership_terms(DAEMON_ROLE, limit=1)[0].term > first.term,
                timeout_s=60,
                message=f"the standby taking over\n{up.output()}",
            )
            assert store.leadership_terms(DAEMON_ROLE, limit=1)[0].holder != first.holder
            wait_until(
                lambda: any(f"daemon {active} exited with code -9; restarting it" in line for line in up.lines),
                timeout_s=30,
                message=f"the supervisor restarting the killed wrapper\n{up.output()}",
            )
            _fires_after(up, killed_at + 2, "the active daemon was killed")
        finally:
            store.engine.dispose()


def test_up_production_needs_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != POSTGRES_URL_ENV}
    result = subprocess.run(
        [str(BIN / "agent-pipelines"), "up", "--production"], env={**env, "DAGSTER_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode != 0
    assert "needs PostgreSQL" in result.stderr and POSTGRES_URL_ENV in result.stderr


def test_up_refuses_ports_in_use_naming_each_and_its_option(tmp_path: Path) -> None:
    """A part whose port is taken would die at start and be restarted forever, its error only in
    its own log: `up` says so at once instead."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        free = {name: free_port() for name in ("ui", "agent", "ingress")}
        env = {k: v for k, v in os.environ.items() if k != POSTGRES_URL_ENV}
        result = subprocess.run(
            [str(BIN / "agent-pipelines"), "up", "--port", str(free["ui"]), "--code-server-port", str(taken),
             "--demo-agent-port", str(free["agent"]), "--ingress-port", str(free["ingress"])],
            env={**env, "DAGSTER_HOME": str(tmp_path / "home")}, capture_output=True, text=True, timeout=120, check=False,
        )
    assert result.returncode != 0
    assert f"port(s) in use: 127.0.0.1:{taken} (--code-server-port)" in result.stderr, result.stderr
    assert str(free["ui"]) not in result.stderr, "only the taken port is named"


def test_a_part_that_dies_is_restarted_with_the_last_line_of_its_log(tmp_path: Path) -> None:
    from agent_pipelines.supervisor import Part, Supervisor

    said: list[str] = []
    log = tmp_path / "code-server.log"
    script = "import sys; print('starting'); print('OSError: [Errno 98] Address already in use', flush=True); sys.exit(1)"
    part = Part(name="code server", argv=[sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path, log=log)
    supervisor = Supervisor([part], say=said.append, backoff_s=[60.0])
    part.start()
    assert part.process is not None and part.process.wait(timeout=60) == 1
    supervisor._watch(time.monotonic())
    assert said == [
        "code server exited with code 1; restarting it in 60 s (the other parts keep running); its log ends: OSError: [Errno 98] Address already in use"
    ]
