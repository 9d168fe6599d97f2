"""Run `dagster-daemon` only while holding the lease: any number of these on any machines, one
daemon active, the others standing by without running any daemon loop.

Dagster OSS supports exactly one daemon per instance (two double runs: dagster-io/dagster
#9623, #33962). `agent-pipelines daemon` wraps it: a keeper thread takes or proves the lease
(`lease.PostgresLease`) while the main thread starts the daemon when the lease is valid and
SIGKILLs it the moment it is not (fencing). The daemon runs in a process group of its own and
dies with its wrapper (PR_SET_PDEATHSIG), so killing the wrapper never leaves a daemon behind.
A daemon that exits while the lease is held is restarted with back-off, like `up` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_pipelines.failover.lease import PostgresLease
from agent_pipelines.supervisor import BACKOFF_S, STABLE_AFTER_S

#: The term the daemon runs under, for its logs and runs.
TERM_ENV = "AGENT_PIPELINES_LEADER_TERM"
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the wrapper dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class DaemonGuard:
    lease: PostgresLease
    command: Sequence[str]
    env: dict[str, str]
    cwd: Path
    say: Callable[[str], None] = print
    log: Path | None = None
    backoff_s: Sequence[float] = BACKOFF_S
    tick_s: float = 0.2
    _daemon: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _started_at: float = field(default=0.0, init=False)
    _restart_at: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)
    _term: int | None = field(default=None, init=False)
    _problem: str = field(default="", init=False)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: stand by, lead, fence."""
        keeper = threading.Thread(target=self._keep, args=(stop,), name="agent-pipelines-lease", daemon=True)
        keeper.start()
        self.say(f"standing by for the lease on {self.lease.role!r} as {self.lease.holder}")
        try:
            while not stop.wait(self.tick_s):
                self._watch(time.monotonic())
        finally:
            self._stop_daemon(signal.SIGTERM, STOP_GRACE_S)
            keeper.join(timeout=self.lease.timing.fence_after_s + 2)
            self.lease.release("the wrapper was stopped")
            self.lease.close()
            self.say("stopped")

    # The keeper thread: the only one that talks to the database.
    def _keep(self, stop: threading.Event) -> None:
        timing = self.lease.timing
        while not stop.is_set():
            if self.lease.term is None:
                try:
                    term = self.lease.try_acquire()
                    if self._problem:
                        self._problem = ""
                        self.say("the database is reachable again; standing by")
                except Exception as exc:  # noqa: BLE001 - the database may be down; try again
                    self._report(f"cannot reach the database for the lease: {_short(exc)}")
                    self.lease.lost()
                    term = None
                if term is None:
                    stop.wait(timing.retry_every_s)
                continue
            try:
                self.lease.check()
            except Exception as exc:  # noqa: BLE001 - the session is gone; so is the lock
                self._report(f"the lease's session failed: {_short(exc)}")
                self.lease.lost()
                continue
            stop.wait(timing.check_every_s)

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            self.say(problem)

    # The main thread: the daemon runs exactly while the lease is valid.
    def _watch(self, now: float) -> None:
        term = self.lease.valid()
        running = self._daemon is not None and self._daemon.poll() is None
        if term is None:
            if self._daemon is not None:
                self._stop_daemon(signal.SIGKILL, 0)
                self.say(f"term {self._term}: lease lost; dagster-daemon killed (fenced), standing by")
                self.lease.abandon()  # a check stuck on a silent network must not hold the thread
            self._term = None
            return
        if self._term != term:
            self._term, self._failures, self._restart_at = term, 0, now
            self.say(f"term {term}: this wrapper is active")
        if running:
            if now - self._started_at >= STABLE_AFTER_S:
                self._failures = 0
            return
        if self._daemon is not None:
            code = self._daemon.returncode
            pause = self.backoff_s[min(self._failures, len(self.backoff_s) - 1)]
            self._failures += 1
            self._restart_at = now + pause
            self._daemon = None
            self.say(f"term {term}: dagster-daemon exited with code {code}; restarting it in {pause:g} s")
            return
        if now >= self._restart_at:
            self._start_daemon(term)

    def _start_daemon(self, term: int) -> None:
        output = self.log.open("ab") if self.log is not None else None
        try:
            self._daemon = subprocess.Popen(
                list(self.command),
                env={**self.env, TERM_ENV: str(term)},
                cwd=self.cwd,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
            )
        finally:
            if output is not None:
                output.close()
        self._started_at = time.monotonic()
        self.say(f"term {term}: dagster-daemon started (pid {self._daemon.pid})")

    def _stop_daemon(self, signum: int, grace_s: float) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is None or daemon.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(daemon.pid, signum)
        try:
            daemon.wait(timeout=grace_s or 5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(daemon.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout=5)

    @property
    def daemon_pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None else None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]
