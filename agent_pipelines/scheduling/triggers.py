"""What started an execution, and the idempotency key every attempt of it shares.

The key is derived from the task and what triggered it (its due time, its event id, or for a
manual launch the root run id), never from the run id alone: a re-execution gets a new run id
but is the same execution as far as the agent's side effects are concerned. The key is also
the claim that makes an execution happen exactly once (see `agent_pipelines.store.Claim`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent_pipelines import tags
from agent_pipelines.timing import format_due, parse_due

TriggerKind = Literal["schedule", "event", "upstream", "manual"]
KEY_PREFIX = "agent-pipelines"
AUTOMATION_TAG = "dagster/from_automation_condition"


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    ref: str  # due time (canonical UTC text), "window-<start>", event id, or root run id
    due_time: dt.datetime | None = None

    def idempotency_key(self, task: str) -> str:
        return f"{KEY_PREFIX}:{task}:{self.kind}:{self.ref}"

    @property
    def claimed(self) -> bool:
        """Whether executions of this trigger must win a claim before sending."""
        return self.kind in ("schedule", "event")

    @classmethod
    def scheduled(cls, due_time: dt.datetime) -> Trigger:
        return cls("schedule", format_due(due_time), due_time)

    @classmethod
    def from_key(cls, key: str) -> tuple[str, Trigger]:
        """(task, trigger) back from an idempotency key."""
        _prefix, task, kind, ref = key.split(":", 3)
        due = None
        if kind == "schedule":
            due = parse_due(ref.removeprefix("window-"))
        return task, cls(kind, ref, due)  # type: ignore[arg-type]


def trigger_from_run_tags(run_tags: Mapping[str, str], run_id: str) -> Trigger:
    if run_tags.get(tags.EVENT_ID):
        return Trigger("event", run_tags[tags.EVENT_ID])
    due = run_tags.get(tags.DUE_TIME) or run_tags.get(tags.SCHEDULED_EXECUTION_TIME)
    if due:
        return Trigger.scheduled(parse_due(due))
    if run_tags.get(tags.WINDOW_START):
        start = parse_due(run_tags[tags.WINDOW_START])
        return Trigger("schedule", f"window-{format_due(start)}", start)
    root = run_tags.get(tags.ROOT_RUN_ID, run_id)
    if run_tags.get(AUTOMATION_TAG):
        return Trigger("upstream", root)
    return Trigger("manual", root)
