"""`agent-pipelines up` keeps its parts running: SIGKILL the daemon, the code server, the webserver
or the ingress and it is restarted (the terminal says so) while the others keep serving, and
tasks keep firing; Ctrl-C still stops everything within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent_pipelines.local_platform import RUN_WORKER_MARK, processes_of, signal_processes, wait_until
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Up:
    process: subprocess.Popen[str]
    home: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self, mark: bytes) -> list[int]:
        return processes_of(self.home, mark)

    def succeeded_after(self, moment: float) -> int:
        database = self.home / STATE_DB_FILENAME
        if not database.exists():
            return 0
        store = StateStore(f"sqlite:///{database}")
        try:
            return sum(
                1
                for e in store.executions_for_task("pulse", limit=10_000)
                if e.status == status.SUCCEEDED and e.due_time is not None and e.due_time.timestamp() > moment
            )
        finally:
            store.engine.dispose()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    ports = {name: free_port() for name in ("ui", "code", "agent", "ingress")}
    catalog = write_catalog(tmp_path / "catalog", f"http://127.0.0.1:{ports['agent']}", TASKS)
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "AGENT_PIPELINES_CATALOG": str(catalog), "DEMO_AGENT_TOKEN": "demo-local-token"}
    process = subprocess.Popen(
        [str(BIN / "agent-pipelines"), "up", "--port", str(ports["ui"]), "--code-server-port", str(ports["code"]),
         "--demo-agent-port", str(ports["agent"]), "--ingress-port", str(ports["ingress"])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    running = Up(process, home, ports)

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


def _fires_after(up: Up, moment: float, what: str) -> None:
    wait_until(lambda: up.succeeded_after(moment) >= 3, timeout_s=180, message=f"pulses after {what}\n{up.output()}")


def test_up_restarts_each_part_that_dies_and_the_rest_keeps_running(up: Up) -> None:
    ui = f"http://127.0.0.1:{up.ports['ui']}/server_info"
    ingress = f"http://127.0.0.1:{up.ports['ingress']}/health"
    wait_until(lambda: up.succeeded_after(0) >= 3, timeout_s=240, message=f"the first pulses\n{up.output()}")

    for name, mark in (("daemon", b"dagster-daemon"), ("code server", b"code-server\0start"), ("ingress", b"\0ingress\0"), ("webserver", b"dagster-webserver")):
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
