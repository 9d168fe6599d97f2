"""Keeps the platform's processes running: each one restarted with back-off when it dies.

`agent-pipelines up` (what `make run` runs) starts the code server, the Dagster webserver and
daemon, the event ingress and the demo agent as separate processes, each in a process group of
its own. A part that exits is logged and started again after a growing pause (reset once it has
stayed up for a while); the others keep running. Ctrl-C or SIGTERM stops everything within a few
seconds: the parts get SIGTERM, whatever is left after the grace period SIGKILL, and runs left
unfinished are failed in Dagster with what they held settled (see `settle_unfinished_runs`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Pauses before restarting a part that died, in order; the last one repeats.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A part up this long has recovered: its next death restarts it after the first pause again.
STABLE_AFTER_S = 60.0
#: Stopping: SIGTERM, then SIGKILL after this long.
STOP_GRACE_S = 4.0


@dataclass
class Part:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    log: Path | None = None  # None: the part writes to the supervisor's output

    def start(self) -> None:
        output = self.log.open("ab") if self.log is not None else None
        self.process = subprocess.Popen(
            list(self.argv), env=self.env, cwd=self.cwd, stdout=output, stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if output is not None:
            output.close()
        self.started_at = time.monotonic()
        self.restart_at = None

    def last_log_line(self, limit: int = 300) -> str:
        """The last line of its log (why it died, most often), shortened; empty without one."""
        if self.log is None or not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(max(0, self.log.stat().st_size - 4096))
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:limit] if lines else ""

    def signal(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)


@dataclass
class Supervisor:
    parts: list[Part]
    say: Callable[[str], None] = print
    backoff_s: Sequence[float] = BACKOFF_S
    on_stopping: Callable[[], None] = lambda: None
    on_stopped: Callable[[], None] = lambda: None
    _stopping: bool = field(default=False, init=False)

    def run(self) -> int:
        """Until SIGINT or SIGTERM; returns the exit code."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for part in self.parts:
                part.start()
            while not self._stopping:
                self._watch(time.monotonic())
                time.sleep(0.2)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _request_stop(self, *_: object) -> None:
        self._stopping = True

    def _watch(self, now: float) -> None:
        for part in self.parts:
            if part.restart_at is not None:
                if now >= part.restart_at:
                    self.say(f"restarting {part.name}")
                    part.start()
                continue
            code = part.process.poll() if part.process is not None else None
            if code is None:
                continue
            if now - part.started_at >= STABLE_AFTER_S:
                part.failures = 0
            pause = self.backoff_s[min(part.failures, len(self.backoff_s) - 1)]
            part.failures += 1
            part.restart_at = now + pause
            part.signal(signal.SIGKILL)  # whatever it left behind in its group
            last = part.last_log_line()
            ends = f"; its log ends: {last}" if last else ""
            self.say(f"{part.name} exited with code {code}; restarting it in {pause:g} s (the other parts keep running){ends}")

    def stop(self) -> None:
        self.say("stopping...")
        try:
            self.on_stopping()
        except Exception as exc:  # noqa: BLE001 - stopping goes on regardless
            self.say(f"could not prepare the runs for the stop: {exc!r}")
        for part in self.parts:
            part.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for part in self.parts:
            if part.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                part.process.wait(timeout=max(0.05, deadline - time.monotonic()))
        for part in self.parts:
            part.signal(signal.SIGKILL)  # whatever outlived the grace period, run workers included
        self.on_stopped()
        self.say("stopped")


def cancel_started_runs(home: Path) -> None:
    """Mark the instance's running runs as being cancelled, so that the SIGTERM their workers
    get next ends them as cancelled (a termination someone asked for), not as crashes."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            instance.report_run_canceling(run, message="agent_pipelines: the platform is stopping")


def settle_unfinished_runs(home: Path, why: str = "the platform was stopped") -> int:
    """Fail every run of the instance that is not finished (its process is gone now) and settle
    what it held: unsent claims become `not_sent`, requests in flight `unknown`."""
    import dagster as dg

    from agent_pipelines.store import StateStore

    unfinished = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        store = StateStore.for_instance(instance)
        runs = instance.get_runs(dg.RunsFilter(statuses=unfinished))
        for run in runs:
            store.release_run(run.run_id, why)
            store.forget_beats([run.run_id])
            if run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED):
                instance.report_run_canceled(run, f"agent_pipelines: {why} before this run started")
            else:
                instance.report_run_failed(run, f"agent_pipelines: {why} while this run was going")
        return len(runs)
