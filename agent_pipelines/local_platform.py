"""The platform as it runs for real, for tests and benchmarks: a DAGSTER_HOME, a catalog, a
`dagster-daemon` process, the event ingress and a demo agent, all on 127.0.0.1.

`make run` uses `agent-pipelines up` instead; this is the scriptable version that can kill and
restart the daemon and read what the agent received.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.demo_agent import RunningDemoAgent
from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.ingress import create_ingress_app, server_options
from agent_pipelines.instance import initialize_storage
from agent_pipelines.store import StateStore, url_for_instance

#: Run workers are the code server's multiprocessing children (DefaultRunLauncher).
RUN_WORKER_MARK = b"multiprocessing.spawn"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Platform:
    """Starts and kills a real daemon against `home` (which holds a dagster.yaml) and `catalog`."""

    def __init__(
        self,
        home: Path,
        catalog: Path,
        agent: RunningDemoAgent,
        log_dir: Path,
        workspace: Path | None = None,
    ) -> None:
        self.home = home
        self.workspace = workspace
        self.catalog_path = catalog
        self.agent = agent
        self.log_dir = log_dir
        self.daemon: subprocess.Popen[bytes] | None = None
        self.ingress: RunningServer | None = None
        self.code_server: subprocess.Popen[bytes] | None = None
        self.wrappers: dict[str, subprocess.Popen[bytes]] = {}  # `agent-pipelines daemon` by name
        self._wrapper_env: dict[str, dict[str, str]] = {}
        self._starts = 0
        self.env = dict(os.environ, DAGSTER_HOME=str(home), AGENT_PIPELINES_CATALOG=str(catalog))
        initialize_storage(home)  # before the daemon and this process open it side by side

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def store(self) -> StateStore:
        with self.instance() as instance:
            return StateStore.for_url(url_for_instance(instance))

    def start_daemon(self) -> None:
        self._starts += 1
        log = (self.log_dir / f"daemon-{self._starts}.log").open("w")
        target = ["-w", str(self.workspace)] if self.workspace else ["-m", "agent_pipelines.definitions"]
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", *target],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_daemon(self, *, with_its_runs: bool) -> None:
        """SIGKILL the daemon; `with_its_runs` also kills its code server and run workers."""
        assert self.daemon is not None
        if with_its_runs:
            os.killpg(self.daemon.pid, signal.SIGKILL)
        else:
            self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(timeout=30)
        self.daemon = None

    def kill_run_workers(self) -> int:
        """SIGKILL the run workers only, as the OOM killer would: the daemon and the code server
        survive, and Dagster marks the runs failed at once."""
        return signal_processes(processes_of(self.home, RUN_WORKER_MARK))

    def start_ingress(self) -> str:
        store = self.store()
        catalog = load_catalog(self.catalog_path)
        self.ingress = serve_in_thread(create_ingress_app(lambda: catalog.sources, store), **server_options())
        return self.ingress.url

    def start_code_server(self) -> Path:
        """A long-lived gRPC code server, as in production; returns the workspace that uses it."""
        from agent_pipelines.instance import write_workspace

        port = free_port()
        log = (self.log_dir / "code-server.log").open("ab")
        self.code_server = subprocess.Popen(
            [str(BIN / "dagster"), "code-server", "start", "-m", "agent_pipelines.definitions", "-h", "127.0.0.1",
             "-p", str(port), "--log-level", "warning"],
            cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workspace = write_workspace(self.home, host="127.0.0.1", port=port)
        return self.workspace

    def start_wrapper(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """`agent-pipelines daemon --name <name>` (daemon failover), logging to wrapper-<name>.log."""
        log = (self.log_dir / f"wrapper-{name}.log").open("ab")
        wrapper = subprocess.Popen(
            [str(BIN / "agent-pipelines"), "daemon", "--name", name],
            cwd=PROJECT_ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wrappers[name] = wrapper
        self._wrapper_env[name] = env
        return wrapper

    def restart_wrapper(self, name: str) -> subprocess.Popen[bytes]:
        return self.start_wrapper(name, **self._wrapper_env[name])

    def wrapper_log(self, name: str) -> str:
        path = self.log_dir / f"wrapper-{name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for wrapper in self.wrappers.values():
            if wrapper.poll() is None:
                wrapper.send_signal(signal.SIGTERM)
        for wrapper in self.wrappers.values():
            try:
                wrapper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                wrapper.kill()
        if self.code_server is not None:
            self.code_server.kill()
            self.code_server.wait(timeout=30)
        if self.daemon is not None:
            try:
                os.killpg(self.daemon.pid, signal.SIGTERM)
                self.daemon.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.daemon.pid, signal.SIGKILL)
            self.daemon = None
        if self.ingress is not None:
            self.ingress.stop()
        _kill_leftover_runs(self.home)

    def daemon_logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.log_dir.glob("daemon-*.log")))


#: Ports handed to servers that another process binds later: below Linux's ephemeral range
#: (32768-60999), which the kernel also gives outgoing connections as their local port. A port
#: from bind(0) is free when chosen but may be some connection's end by the time the server
#: binds it (a code server failed so, for minutes, beside a busy test worker).
LISTEN_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server another process will bind."""
    for port in random.sample(LISTEN_PORTS, 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the whole range taken: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
    return found


def processes_of(home: Path, mark: bytes = b"") -> list[int]:
    """Pids of this DAGSTER_HOME's processes whose command line contains `mark`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"DAGSTER_HOME={home}".encode() in environ and mark in cmdline:
            found.append(int(proc.name))
    return found


def signal_processes(pids: list[int], signum: int = signal.SIGKILL) -> int:
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, signum)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def _kill_leftover_runs(home: Path) -> None:
    """Run workers outlive a killed daemon; stop the ones of this DAGSTER_HOME."""
    signal_processes(processes_of(home))


def wait_until(predicate, timeout_s: float, interval_s: float = 0.5, message: str | Callable[[], str] = "") -> None:  # noqa: ANN001
    """Poll `predicate` until it holds; `message` may be a callable, to describe the state at the timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    described = message() if callable(message) else message
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {described or predicate}")
