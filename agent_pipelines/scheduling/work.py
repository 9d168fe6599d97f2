"""The units the dispatcher works on: an execution to attempt, and what came of an attempt."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_pipelines.agents.base import AgentCallError, AgentRequest, AgentResponse
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.retries import deadline_for
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import StoredEvent

UTC = dt.timezone.utc

#: How the carrier gets the right to send it:
#: new - insert the claim (scheduled, event and upstream executions: exactly once);
#: take - take over an execution waiting for a carrier (catch-up, unsent claim, orphaned retry);
#: own - this run already holds it (its own retry);
#: manual - a person launched it: claim it, or take it back from an earlier run of the same launch.
ClaimMode = Literal["new", "take", "own", "manual"]


@dataclass(frozen=True)
class WorkItem:
    """One execution to attempt, no earlier than `fire_at` (epoch seconds)."""

    task: TaskSpec
    trigger: Trigger
    fire_at: float
    claim: ClaimMode = "new"
    event: StoredEvent | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)  # upstream task -> execution key read
    variables: Mapping[str, Any] = field(default_factory=dict)
    deadline: dt.datetime | None = None
    retry_number: int = 0  # 0: a first attempt (in this run)
    #: outputs handed over in memory by the upstream execution this one follows (it may not be
    #: in the store yet when this one renders)
    upstream_outputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.trigger.idempotency_key(self.task.name)

    @property
    def due_time(self) -> dt.datetime | None:
        """What lateness is measured against: the due time, or when the event arrived."""
        if self.trigger.due_time is not None:
            return self.trigger.due_time
        if self.event is not None:
            return self.event.received_at
        return None

    @classmethod
    def for_event(cls, task: TaskSpec, event: StoredEvent, now: dt.datetime) -> WorkItem:
        """A subscriber of an event, sent at once and claimed per (task, event)."""
        return cls(
            task=task,
            trigger=Trigger.for_event(event.event_id),
            fire_at=now.timestamp(),
            event=event,
            deadline=deadline_for(task, None, event.received_at),
        )

    def again(self, fire_at: float, retry_number: int) -> WorkItem:
        return WorkItem(
            task=self.task,
            trigger=self.trigger,
            fire_at=fire_at,
            claim="own",
            event=self.event,
            upstream=self.upstream,
            variables=self.variables,
            deadline=self.deadline,
            retry_number=retry_number,
            upstream_outputs=self.upstream_outputs,
        )


@dataclass
class Attempt:
    """One attempt of one execution: what was sent, and what came back."""

    item: WorkItem
    request: AgentRequest
    version: str
    canary: bool
    render_time: dt.datetime
    upstream: Mapping[str, str] = field(default_factory=dict)  # upstream task -> execution key read
    number: int = 0  # the execution's attempt number (counting every run's attempts)
    sent_at: dt.datetime | None = None
    answered_at: dt.datetime | None = None
    response: AgentResponse | None = None
    error: AgentCallError | None = None

    @property
    def lateness_ms(self) -> float | None:
        due = self.item.due_time
        if self.sent_at is None or due is None:
            return None
        return (self.sent_at - due).total_seconds() * 1000.0


@dataclass(frozen=True)
class Finished:
    """An execution's state after an attempt (or a decision not to attempt), ready to record.

    `status` is one of `agent_pipelines.store.status`; `attempt` is None when nothing was sent.
    """

    item: WorkItem
    status: str
    attempt: Attempt | None = None
    reason: str | None = None
    next_attempt_at: dt.datetime | None = None
    version: str | None = None
    problem: AgentCallError | None = None  # why nothing could be sent (a template error, ...)
    trace_id: str | None = None  # its trace, when tracing records it (agent_pipelines.telemetry)

    @property
    def ok(self) -> bool:
        return self.attempt is not None and self.attempt.response is not None

    @property
    def error(self) -> AgentCallError | None:
        return self.attempt.error if self.attempt is not None and self.attempt.error else self.problem
