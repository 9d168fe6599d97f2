"""What a notification is about: one event, its subject and the facts its message is made of."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Events of one family share a rate window per subject: a task flapping between failure and
#: recovery sends one message per window (and the state it ended in once the window closes).
FAMILIES = {
    "failure": "state",
    "recovery": "state",
    "late": "late",
    "check_failed": "check",
    "agent_unhealthy": "health",
    "budget_exceeded": "budget",
}


@dataclass(frozen=True)
class Event:
    kind: str  # agent_pipelines.catalog.notifications.EVENT_KINDS
    subject: str  # "task:<name>", "agent:<name>" or "budget:<name>"
    at: dt.datetime
    task: str | None = None
    agent: str | None = None
    owner: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """An agent's recovery belongs with its unhealthy event, a task's with its failure."""
        return "health" if self.subject.startswith("agent:") else FAMILIES[self.kind]

    @property
    def subject_name(self) -> str:
        return self.subject.split(":", 1)[1]

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "subject": self.subject,
                "at": self.at.isoformat(),
                "task": self.task,
                "agent": self.agent,
                "owner": self.owner,
                "facts": dict(self.facts),
            },
            sort_keys=True,
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        data = json.loads(text)
        return cls(
            kind=data["kind"],
            subject=data["subject"],
            at=dt.datetime.fromisoformat(data["at"]),
            task=data.get("task"),
            agent=data.get("agent"),
            owner=data.get("owner"),
            facts=data.get("facts") or {},
        )
