"""One execution of one task: claim it, render its prompt, send it, record what came back.

Shared by the task ops, which run executions when their step runs, and the trigger dispatcher,
which fires a window's executions at their exact due times from a background thread. Database
work (claims, attempts, sessions) is synchronous and happens before and after the sending, never
while requests are in flight on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent_pipelines import event_loop
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.templates import TemplateProblem, render
from agent_pipelines.store import Claim, StateStore, StoredEvent
from agent_pipelines.triggers import Trigger
from resources.agent_resource import AgentConnection, AgentResource
from resources.agents.base import (
    AgentCallError,
    AgentRequest,
    AgentResponse,
    ChatMessage,
    FailureKind,
    SessionState,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance

UTC = dt.timezone.utc
ClaimMode = Literal["none", "insert", "catchup"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True)
class Planned:
    """An execution to perform: a task, what triggered it, and how it is claimed."""

    task: TaskSpec
    trigger: Trigger
    event: StoredEvent | None = None
    claim: ClaimMode = "none"

    @property
    def key(self) -> str:
        return self.trigger.idempotency_key(self.task.name)

    @property
    def due_time(self) -> dt.datetime | None:
        """What lateness is measured against: the due time, or when the event arrived."""
        if self.event is not None:
            return self.event.received_at
        return self.trigger.due_time


@dataclass
class Prepared:
    planned: Planned
    request: AgentRequest
    attempts: int
    render_time: dt.datetime
    version: str = ""
    canary: bool = False


@dataclass
class Outcome:
    planned: Planned
    attempts: int = 0
    request: AgentRequest | None = None
    response: AgentResponse | None = None
    error: AgentCallError | None = None
    sent_at: dt.datetime | None = None
    skipped: str | None = None  # why nothing was sent (another run holds the claim, ...)
    render_time: dt.datetime | None = None
    version: str = ""  # the prompt version actually sent (a canary uses the candidate's)
    canary: bool = False

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def lateness_ms(self) -> float | None:
        due = self.planned.due_time
        if self.sent_at is None or due is None:
            return None
        return (self.sent_at - due).total_seconds() * 1000.0

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.is_retryable(self.planned.task.idempotent)


@dataclass
class TaskRunner:
    """Runs executions for one Dagster run."""

    catalog: Catalog
    store: StateStore
    instance: DagsterInstance
    run_id: str
    agents: Mapping[str, AgentResource]
    log: logging.Logger | Any = field(default_factory=lambda: logging.getLogger(__name__))
    variables_for: Callable[[str], Mapping[str, Any]] = lambda _task: {}
    started: dt.datetime = field(default_factory=utcnow)
    #: (task, key) -> (spec to run, its prompt version, canary?); default: the loaded prompt
    choose_prompt: Callable[[TaskSpec, str], tuple[TaskSpec, str, bool]] | None = None

    # -- the whole cycle ------------------------------------------------------------------------

    def execute(self, planned: Sequence[Planned]) -> list[Outcome]:
        """Claim, prepare, send concurrently and record; one outcome per planned execution."""
        allowed, outcomes = self.acquire(planned)
        prepared, failed = self.prepare_many(allowed)
        outcomes.extend(failed)
        if prepared:
            sent = event_loop.run(self.send_all(prepared))
            self.record(sent)
            outcomes.extend(sent)
        order = {p.key: i for i, p in enumerate(planned)}
        return sorted(outcomes, key=lambda o: order.get(o.planned.key, 0))

    # -- claims ---------------------------------------------------------------------------------

    def acquire(self, planned: Sequence[Planned]) -> tuple[list[Planned], list[Outcome]]:
        """Which executions this run may send; the others come back as skipped outcomes.

        A claim this run already holds (a retried step) is still this run's to send.
        """
        to_insert = [p for p in planned if p.claim == "insert"]
        won = self.store.claim(
            [
                Claim(
                    idempotency_key=p.key,
                    task=p.task.name,
                    agent=p.task.agent,
                    run_id=self.run_id,
                    trigger=p.trigger.kind,
                    due_time=p.trigger.due_time,
                    prompt_version=self.catalog.prompt_versions[p.task.name],
                )
                for p in to_insert
            ]
        )
        allowed: list[Planned] = []
        skipped: list[Outcome] = []
        for item in planned:
            if item.claim == "none" or item.key in won:
                allowed.append(item)
            elif item.claim == "catchup" and self.store.take_over_catchup(item.key, self.run_id):
                allowed.append(item)
            else:
                existing = self.store.get_execution(item.key)
                if existing is not None and existing.run_id == self.run_id and existing.status != "succeeded":
                    allowed.append(item)
                else:
                    holder = f"run {existing.run_id} ({existing.status})" if existing else "nobody"
                    skipped.append(Outcome(item, skipped=f"already claimed by {holder}"))
        return allowed, skipped

    # -- preparing ------------------------------------------------------------------------------

    def prepare_many(self, planned: Sequence[Planned]) -> tuple[list[Prepared], list[Outcome]]:
        """Render every prompt, then count the attempts of all of them in one transaction."""
        rendered: list[tuple[Planned, AgentRequest, dt.datetime, str, bool]] = []
        failed: list[Outcome] = []
        for item in planned:
            result = self._render(item)
            if isinstance(result, Outcome):
                failed.append(result)
            else:
                rendered.append((item, *result))
        attempts = self.store.begin_attempts(
            [
                {
                    "idempotency_key": item.key,
                    "task": item.task.name,
                    "agent": item.task.agent,
                    "run_id": self.run_id,
                    "trigger": item.trigger.kind,
                    "due_time": item.trigger.due_time,
                    "prompt_version": version,
                }
                for item, _request, _time, version, _canary in rendered
            ]
        )
        prepared = []
        for item, request, when, version, canary in rendered:
            if item.key in attempts:
                prepared.append(Prepared(item, request, attempts[item.key], when, version, canary))
            else:
                failed.append(Outcome(item, skipped="the misfire reconciler decided it first (missed or caught up)"))
        return prepared, failed

    def _render(self, planned: Planned) -> tuple[AgentRequest, dt.datetime, str, bool] | Outcome:
        if self.choose_prompt is not None:
            task, version, canary = self.choose_prompt(planned.task, planned.key)
        else:
            task, version, canary = planned.task, self.catalog.prompt_versions[planned.task.name], False
        agent = self.agents[task.agent]
        zone = zoneinfo.ZoneInfo(task.timezone)
        render_time = (planned.trigger.due_time or self.started).astimezone(zone)
        variables = {**task.variables, **self.variables_for(task.name)}
        context: dict[str, Any] = {
            **variables,
            "task": task.name,
            "due_time": render_time,
            "now": dt.datetime.now(zone),
            "trigger": planned.trigger.kind,
        }
        if task.events:
            context["event"] = planned.event.as_template_value() if planned.event else None
        try:
            if task.depends_on:
                context["upstream"] = self._upstream_outputs(task)
            prompt = render(task.prompt, context)
            system = render(task.system, context) if task.system else None
            session = self._session(task, agent, planned.key)
        except TemplateProblem as problem:
            error = AgentCallError(FailureKind.CONFIG, f"prompt of {task.name!r}: {problem.message}")
            self._record_failure(planned, error, None)
            return Outcome(planned, attempts=1, error=error, render_time=render_time, version=version, canary=canary)
        request = AgentRequest(
            prompt=prompt,
            system=system,
            idempotency_key=planned.key,
            session=session,
            timeout_s=task.timeout or agent.timeout_s,
            task=task.name,
            variables=variables,
        )
        return request, render_time, version, canary

    def _upstream_outputs(self, task: TaskSpec) -> dict[str, str]:
        outputs: dict[str, str] = {}
        from dagster import AssetKey

        for dep in task.depends_on:
            event = self.instance.get_latest_materialization_event(AssetKey(dep))
            materialization = event.asset_materialization if event else None
            output = materialization.metadata.get("output") if materialization else None
            if output is None:
                raise TemplateProblem(
                    f"upstream task {dep!r} has no output yet: materialize it first "
                    "(or run the whole workflow job)"
                )
            outputs[dep] = str(output.value)
        return outputs

    def _session(self, task: TaskSpec, agent: AgentResource, key: str) -> SessionState:
        if task.session == "isolated":
            return SessionState(mode="isolated", key=key)
        history: tuple[ChatMessage, ...] = ()
        if agent.replays_history:
            history = tuple(
                ChatMessage(role=role, content=content)  # type: ignore[arg-type]
                for role, content in self.store.history(task.name, agent.history_turns)
            )
        return SessionState(
            mode="task",
            key=f"agent-pipelines:{task.name}",
            remote_id=self.store.session_remote_id(task.name, agent.name),
            history=history,
        )

    # -- sending --------------------------------------------------------------------------------

    async def send_all(self, prepared: Sequence[Prepared]) -> list[Outcome]:
        """Send everything concurrently, one client per agent; never raises."""
        async with contextlib.AsyncExitStack() as stack:
            connections: dict[str, AgentConnection | AgentCallError] = {}
            for name in {p.planned.task.agent for p in prepared}:
                try:
                    connections[name] = await stack.enter_async_context(self.agents[name].connect())
                except AgentCallError as error:  # unusable agent, e.g. its token is missing
                    connections[name] = error
            return list(await asyncio.gather(*(self.send(p, connections[p.planned.task.agent]) for p in prepared)))

    async def send(self, prepared: Prepared, connection: AgentConnection | AgentCallError) -> Outcome:
        outcome = Outcome(
            prepared.planned,
            attempts=prepared.attempts,
            request=prepared.request,
            render_time=prepared.render_time,
            version=prepared.version,
            canary=prepared.canary,
        )
        if isinstance(connection, AgentCallError):
            outcome.error = connection
            return outcome
        try:
            outcome.response = await connection.invoke(prepared.request, on_send=lambda: _stamp(outcome))
        except AgentCallError as error:
            outcome.error = error
        except Exception as exc:  # noqa: BLE001 - an adapter bug fails this execution, not the step
            outcome.error = AgentCallError(FailureKind.MALFORMED, f"unexpected client error: {exc!r}")
        return outcome

    # -- recording ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> None:
        self.store.mark_sent(
            [(o.planned.key, o.sent_at, o.lateness_ms) for o in outcomes if o.sent_at is not None]
        )
        for outcome in outcomes:
            if outcome.ok:
                self._record_success(outcome)
            elif outcome.error is not None:
                self._record_failure(outcome.planned, outcome.error, outcome.request)

    def _record_success(self, outcome: Outcome) -> None:
        assert outcome.response is not None and outcome.request is not None
        task = outcome.planned.task
        agent = self.agents[task.agent]
        self.store.finish_attempt(
            outcome.planned.key, succeeded=True, outcome="ok", latency_ms=outcome.response.latency_ms
        )
        if task.session != "task":
            return
        if agent.replays_history:
            self.store.append_history(
                task.name, self.run_id, [("user", outcome.request.prompt), ("assistant", outcome.response.output)]
            )
        elif outcome.response.session_id:
            self.store.save_session(task.name, agent.name, outcome.response.session_id)

    def _record_failure(self, planned: Planned, error: AgentCallError, request: AgentRequest | None) -> None:
        task = planned.task
        if (
            error.kind is FailureKind.CLIENT_ERROR
            and error.status_code == 404
            and request is not None
            and request.session.remote_id
        ):
            # The agent no longer knows the conversation (expired, deleted): start afresh next run.
            self.log.warning(f"{task.name}: session {request.session.remote_id!r} is gone; cleared")
            self.store.clear_session(task.name)
        self.store.finish_attempt(
            planned.key,
            succeeded=False,
            outcome="unknown" if error.outcome_unknown else "failed",
            failure_kind=error.kind.value,
            error=error.message,
        )


def _stamp(outcome: Outcome) -> None:
    outcome.sent_at = dt.datetime.fromtimestamp(time.time(), UTC)
