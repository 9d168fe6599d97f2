"""What started an execution, and the idempotency key every attempt of it shares.

The key is derived from the task and what triggered it (its due time, its event id, the upstream
execution it follows, or for a manual launch the root run id), never from the run id alone: a
re-execution gets a new run id but is the same execution as far as the agent's side effects are
concerned. The key is also the claim that makes an execution happen exactly once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

from agent_pipelines.scheduling.timing import format_due, parse_due

TriggerKind = Literal["schedule", "event", "upstream", "manual"]
KEY_PREFIX = "agent-pipelines"
#: Keys are stored in a 255-character column; long refs (event ids) are shortened with a hash.
MAX_REF_CHARS = 160


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    ref: str  # due time (canonical UTC text), event id, upstream execution, or root run id
    due_time: dt.datetime | None = None

    def idempotency_key(self, task: str) -> str:
        return f"{KEY_PREFIX}:{task}:{self.kind}:{self.ref}"

    @classmethod
    def scheduled(cls, due_time: dt.datetime) -> Trigger:
        return cls("schedule", format_due(due_time), due_time)

    @classmethod
    def for_event(cls, event_id: str) -> Trigger:
        return cls("event", shortened(event_id))

    @classmethod
    def after(cls, upstream_key: str) -> Trigger:
        """Following one upstream execution: one downstream execution per upstream execution."""
        _prefix, task, kind, ref = upstream_key.split(":", 3)
        return cls("upstream", shortened(f"{task}:{kind}:{ref}"))

    @classmethod
    def manual(cls, root_run_id: str) -> Trigger:
        return cls("manual", root_run_id)

    @classmethod
    def from_key(cls, key: str) -> tuple[str, Trigger]:
        """(task, trigger) back from an idempotency key."""
        _prefix, task, kind, ref = key.split(":", 3)
        due = parse_due(ref) if kind == "schedule" else None
        return task, cls(kind, ref, due)  # type: ignore[arg-type]


def shortened(ref: str) -> str:
    """A ref that fits the key column: long ones keep their start and get a hash."""
    if len(ref) <= MAX_REF_CHARS:
        return ref
    digest = hashlib.sha256(ref.encode()).hexdigest()[:16]
    return f"{ref[: MAX_REF_CHARS - 18]}~{digest}"
