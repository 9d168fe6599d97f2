"""Every answer is settled: the store first, then Dagster, from a thread of the recorder's own.

The event loop hands each finished attempt over with a plain, non-blocking `submit` in the same
step that received the answer, so nothing on the loop (a cancelled task, a stopping run) can lose
it. The recorder writes batches to the store (retrying while the database is unreachable), then
does what follows from a recorded outcome (conversation history, agent health, evaluations) and
hands the Dagster events to the run that publishes them. `close` returns once everything
submitted is recorded.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent_pipelines.agents.base import FailureKind
from agent_pipelines.agents.pool import replays_history
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import AgentSpecBase
from agent_pipelines.prompts.checks import CheckOutcome
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.scheduling.agent_health import HealthGate
from agent_pipelines.scheduling.publication import Publication, check_evaluations, publication_for
from agent_pipelines.scheduling.work import Finished
from agent_pipelines.store import ResultRecord, Settlement, StateStore, status

#: Finished attempts are written in batches at most this far apart.
BATCH_EVERY_S = 0.02
MAX_BATCH = 500
#: While the database refuses writes, try again this often (answers are kept meanwhile).
RETRY_WRITE_S = 1.0


@dataclass(frozen=True)
class Verdict:
    """Checks that finished after their execution was recorded (an LLM judge)."""

    finished: Finished
    results: Sequence[CheckOutcome]


@dataclass(frozen=True)
class Mark:
    """Executions about to be sent: mark them `sending` (after everything submitted before)."""

    keys: Sequence[str]
    at: dt.datetime
    result: concurrent.futures.Future[dict[str, int]]


Record = tuple[Finished, Sequence[CheckOutcome]] | Verdict | Mark


def settlement_for(finished: Finished, run_id: str, agent: AgentSpecBase | None = None) -> Settlement:
    attempt = finished.attempt
    error = attempt.error if attempt is not None else None
    response = attempt.response if attempt is not None else None
    outcome = None
    if finished.status == status.SUCCEEDED:
        outcome = "ok"
    elif finished.status in (status.FAILED, status.UNKNOWN):
        outcome = "unknown" if (finished.status == status.UNKNOWN or (error is not None and error.outcome_unknown)) else "failed"
    result = None
    if attempt is not None:
        result = ResultRecord(
            prompt=attempt.request.prompt,
            system=attempt.request.system,
            output=response.output if response is not None else None,
            model=response.model if response is not None else None,
            session_id=(response.session_id if response is not None else None) or attempt.request.session.key,
            tokens_in=response.tokens_in if response is not None else None,
            tokens_out=response.tokens_out if response is not None else None,
            details=dict(response.metadata) if response is not None else (error.details if error is not None else {}),
        )
    return Settlement(
        key=finished.item.key,
        task=finished.item.task.name,
        status=finished.status,
        run_id=run_id,
        outcome=outcome,
        failure_kind=error.kind.value if error is not None else None,
        error=error.describe() if error is not None else None,
        reason=finished.reason,
        latency_ms=response.latency_ms if response is not None else None,
        sent_at=attempt.sent_at if attempt is not None else None,
        lateness_ms=attempt.lateness_ms if attempt is not None else None,
        answered_at=attempt.answered_at if attempt is not None else None,
        next_attempt_at=finished.next_attempt_at,
        result=result,
        cost=agent.token_cost(result.model, result.tokens_in, result.tokens_out) if agent is not None and result is not None else None,
    )


def evaluation_rows(finished: Finished, results: Sequence[CheckOutcome], run_id: str) -> list[dict[str, Any]]:
    attempt = finished.attempt
    assert attempt is not None and attempt.response is not None
    tokens = (attempt.response.tokens_in or 0) + (attempt.response.tokens_out or 0)
    return [
        {
            "task": finished.item.task.name,
            "version": attempt.version,
            "idempotency_key": finished.item.key,
            "run_id": run_id,
            "check_name": result.name,
            "passed": result.passed,
            "score": result.score,
            "details": result.details[:2000],
            "canary": attempt.canary,
            "latency_ms": attempt.response.latency_ms,
            "tokens": tokens,
        }
        for result in results
    ]


class Recorder:
    def __init__(
        self,
        *,
        catalog: Catalog,
        store: StateStore,
        run_id: str,
        health: HealthGate,
        publish: Callable[[Publication], None],
        log: logging.Logger | Any,
        every_success: bool = True,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.run_id = run_id
        self.health = health
        self.publish = publish
        self.log = log
        self.registry = PromptRegistry(store)
        #: report every success as a `succeeded` evaluation (manual runs), or only one that
        #: follows something else (the platform's runs: see `publication_for`)
        self.every_success = every_success
        self._last_ok: dict[str, bool] = {}
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="agent-pipelines-recorder", daemon=True)
        self._started = False
        self.recorded = 0

    def known_outcomes(self, outcomes: dict[str, bool]) -> None:
        """Whether each task's latest execution before this run succeeded."""
        self._last_ok.update(outcomes)

    def submit(self, finished: Finished, checks: Sequence[CheckOutcome] = ()) -> None:
        """Never blocks; safe from any thread."""
        self._queue.put((finished, tuple(checks)))

    def submit_verdict(self, verdict: Verdict) -> None:
        self._queue.put(verdict)

    def mark_sending(self, keys: Sequence[str], at: dt.datetime) -> concurrent.futures.Future[dict[str, int]]:
        """Mark executions `sending`, in order with everything submitted before (a retry's mark
        never overtakes the record of the attempt before it). Resolves to their attempt numbers."""
        result: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()
        self._queue.put(Mark(tuple(keys), at, result))
        return result

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Record everything submitted so far, then stop."""
        if not self._started:
            self.start()
        self._queue.put(None)
        self._thread.join(timeout_s)

    # -- the thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        closing = False
        while not closing:
            batch: list[Record] = []
            item = self._queue.get()
            deadline = time.monotonic() + BATCH_EVERY_S
            while True:
                if item is None:
                    closing = True
                else:
                    batch.append(item)
                # A mark is waited for by requests about to leave: write it at once.
                if closing or len(batch) >= MAX_BATCH or isinstance(item, Mark):
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if batch:
                self._record(batch)

    def _record(self, batch: list[Record]) -> None:
        """In order: runs of settlements are written together, marks between them alone."""
        run: list[Record] = []
        for record in batch:
            if isinstance(record, Mark):
                self._settle(run)
                run = []
                self._mark(record)
            else:
                run.append(record)
        self._settle(run)

    def _mark(self, mark: Mark) -> None:
        try:
            mark.result.set_result(self.store.start_attempts(list(mark.keys), self.run_id, mark.at))
        except Exception as exc:  # noqa: BLE001 - the waiting sends decide (they do not send)
            mark.result.set_exception(exc)

    def _settle(self, batch: list[Record]) -> None:
        if not batch:
            return
        finished = [r for r in batch if not isinstance(r, (Verdict, Mark))]
        for record, _checks in finished:
            if record.attempt is not None:
                # Before the outcome is visible: whoever reads it sees the agent's state too.
                self._safely(self.health.observe, record.item.task.agent or "", record.attempt.error)
        settlements = [settlement_for(f, self.run_id, self.catalog.agents.get(f.item.task.agent or "")) for f, _checks in finished]
        while True:
            try:
                self.store.settle(settlements)
                break
            except Exception:  # noqa: BLE001 - the database is down: keep the answers, try again
                self.log.exception(f"could not record {len(settlements)} execution(s); retrying in {RETRY_WRITE_S:g} s")
                time.sleep(RETRY_WRITE_S)
        self.recorded += len(settlements)
        for record in batch:
            try:
                self._after(record)
            except Exception:  # noqa: BLE001 - what follows a recorded outcome must not stop the others
                self.log.exception("recording what follows an execution failed")

    def _safely(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except Exception:  # noqa: BLE001 - bookkeeping must not stop the recording
            self.log.exception("recording what follows an execution failed")

    def _after(self, record: Record) -> None:
        assert not isinstance(record, Mark)
        if isinstance(record, Verdict):
            rows = evaluation_rows(record.finished, record.results, self.run_id)
            self.registry.record_evaluations(rows)
            task = record.finished.item.task
            declared = task.checks.names() if task.checks else []
            events = check_evaluations(record.finished, record.results, declared, self.run_id)
            self.publish(Publication(key=record.finished.item.key, task=task.name, events=tuple(events)))
            return
        finished, checks = record
        attempt = finished.attempt
        task = finished.item.task
        if attempt is not None:
            self._conversation(finished)
        if finished.ok and checks:
            self.registry.record_evaluations(evaluation_rows(finished, checks, self.run_id))
        report_success = self.every_success or not self._last_ok.get(task.name, False)
        if finished.status != status.RETRYING or finished.attempt is None:
            self._last_ok[task.name] = finished.status == status.SUCCEEDED
        else:
            self._last_ok[task.name] = False
        self.publish(publication_for(self.catalog, finished, checks, self.run_id, report_success))

    def _conversation(self, finished: Finished) -> None:
        attempt = finished.attempt
        assert attempt is not None
        task = finished.item.task
        if task.session != "task":
            return
        agent = self.catalog.agents[task.agent]  # type: ignore[index]
        request, response, error = attempt.request, attempt.response, attempt.error
        if response is not None:
            if replays_history(agent):
                self.store.append_history(task.name, self.run_id, [("user", request.prompt), ("assistant", response.output)])
            elif response.session_id and response.session_id != request.session.key:
                # An agent that picks its own conversation ids (Dify) told us this one.
                self.store.save_session(task.name, agent.name, response.session_id)
        elif (
            error is not None
            and error.kind is FailureKind.CLIENT_ERROR
            and error.status_code == 404
            and request.session.remote_id
        ):
            self.log.warning(f"{task.name}: the agent no longer knows conversation {request.session.remote_id!r}; a new one starts")
            self.store.clear_session(task.name)
