"""Find what is worth a notification in the store, from where the last tick stopped.

Everything is read after the fact, outside runs: executions that ended failed or unknown (after
their retries: `retrying` is not an end), a task's first success after failures, executions
sent later than their task's `late_after` (or missed altogether, or skipped because their agent was
saturated), failed checks, agents marked
unhealthy (and back), budgets exceeded today. The cursor remembers where each source stopped,
so each fact yields one event.

Executions are read by `updated_at`, which concurrent runs write just before they commit: a
row may become visible slightly after a later one. The scan therefore re-reads `LOOKBACK`
behind its mark and skips the keys it has already seen there.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.costs import day_start, overruns
from agent_pipelines.notifications.events import Event
from agent_pipelines.notifications.routing import late_threshold
from agent_pipelines.scheduling.admission import SATURATED
from agent_pipelines.store import StateStore, schema, status
from agent_pipelines.store.base import aware

LOOKBACK = dt.timedelta(seconds=10)
BATCH = 1000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAILED = frozenset({status.FAILED, status.UNKNOWN})
SETTLED = (status.SUCCEEDED, status.FAILED, status.UNKNOWN)
SCANNED = (*SETTLED, status.MISSED, status.SKIPPED)


@dataclass
class DetectionCursor:
    """Where each source stopped; kept as JSON in the sensor's cursor."""

    executions_after: dt.datetime | None = None
    seen: dict[str, str] = field(default_factory=dict)  # execution key -> updated_at, within LOOKBACK
    evaluations_after: int | None = None
    failing: dict[str, list[Any]] = field(default_factory=dict)  # task -> [failures, first failure at]
    unhealthy: dict[str, str] = field(default_factory=dict)  # agent -> unhealthy since
    budgets: list[str] = field(default_factory=list)  # overruns told today: "<subject>@<day>"

    def to_json(self) -> str:
        return json.dumps(
            {
                "executions_after": self.executions_after.isoformat() if self.executions_after else None,
                "seen": self.seen,
                "evaluations_after": self.evaluations_after,
                "failing": self.failing,
                "unhealthy": self.unhealthy,
                "budgets": self.budgets,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> DetectionCursor:
        if not text:
            return cls()
        data = json.loads(text)
        after = data.get("executions_after")
        return cls(
            executions_after=dt.datetime.fromisoformat(after) if after else None,
            seen=dict(data.get("seen") or {}),
            evaluations_after=data.get("evaluations_after"),
            failing={k: list(v) for k, v in (data.get("failing") or {}).items()},
            unhealthy=dict(data.get("unhealthy") or {}),
            budgets=list(data.get("budgets") or []),
        )


class Detector:
    """One pass over every source; `detect` returns the events and moves the cursor on."""

    def __init__(self, catalog: Catalog, store: StateStore) -> None:
        self.catalog = catalog
        self.store = store

    def detect(self, cursor: DetectionCursor, now: dt.datetime) -> list[Event]:
        if cursor.executions_after is None:
            self._start_from_now(cursor)
        events = self._executions(cursor)
        events += self._evaluations(cursor)
        events += self._agent_health(cursor, now)
        events += self._budgets(cursor, now)
        return events

    # -- the first tick starts after what is already there: history is not news --------------------

    def _start_from_now(self, cursor: DetectionCursor) -> None:
        table, evaluations = schema.executions, schema.evaluations
        with self.store.engine.connect() as conn:
            newest = _utc(conn.execute(sa.select(sa.func.max(table.c.updated_at))).scalar())
            cursor.evaluations_after = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(evaluations.c.id), 0))).scalar())
            if newest is not None:
                recent = conn.execute(
                    sa.select(table.c.idempotency_key, table.c.updated_at).where(table.c.updated_at >= newest - LOOKBACK)
                ).all()
                cursor.seen = {key: _utc(at).isoformat() for key, at in recent}
        cursor.executions_after = newest or EPOCH

    # -- executions ---------------------------------------------------------------------------------

    def _executions(self, cursor: DetectionCursor) -> list[Event]:
        assert cursor.executions_after is not None
        table = schema.executions
        query = (
            sa.select(table)
            .where(table.c.status.in_(SCANNED), table.c.updated_at >= cursor.executions_after - LOOKBACK)
            .order_by(table.c.updated_at, table.c.idempotency_key)
            .limit(BATCH + len(cursor.seen))
        )
        with self.store.engine.connect() as conn:
            rows = [r for r in conn.execute(query).mappings() if r["idempotency_key"] not in cursor.seen]
        rows = rows[:BATCH]
        if not rows:
            return []
        first_seen = self._failing_before(
            {r["task"] for r in rows if r["task"] not in cursor.failing}, _utc(rows[0]["updated_at"])
        )
        for task, since in first_seen.items():
            cursor.failing[task] = [1, since.isoformat()]
        events: list[Event] = []
        for row in rows:
            updated = _utc(row["updated_at"])
            cursor.seen[row["idempotency_key"]] = updated.isoformat()
            task = self.catalog.tasks.get(row["task"])
            if task is None:
                continue
            facts = _execution_facts(row)
            subject = f"task:{task.name}"
            common = {"subject": subject, "at": updated, "task": task.name, "agent": row["agent"], "owner": task.owner}
            if row["status"] in FAILED:
                streak = cursor.failing.get(task.name)
                cursor.failing[task.name] = [streak[0] + 1, streak[1]] if streak else [1, updated.isoformat()]
                events.append(Event(kind="failure", facts={**facts, "failures": cursor.failing[task.name][0]}, **common))
            elif row["status"] == status.SUCCEEDED and task.name in cursor.failing:
                failures, since = cursor.failing.pop(task.name)
                events.append(Event(kind="recovery", facts={**facts, "failures": failures, "failing_since": since}, **common))
            threshold = late_threshold(self.catalog, task)
            if threshold is not None:
                lateness = (row["lateness_ms"] or 0.0) / 1000.0
                never_sent = row["status"] == status.MISSED or (
                    row["status"] == status.SKIPPED and (row["reason"] or "").startswith(SATURATED)
                )
                if never_sent or lateness > threshold:
                    events.append(Event(kind="late", facts={**facts, "late_after_s": threshold}, **common))
        newest = max(_utc(r["updated_at"]) for r in rows)
        cursor.executions_after = max(cursor.executions_after, newest)
        horizon = (cursor.executions_after - LOOKBACK).isoformat()
        cursor.seen = {key: at for key, at in cursor.seen.items() if at >= horizon}
        return events

    def _failing_before(self, tasks: Iterable[str], before: dt.datetime) -> dict[str, dt.datetime]:
        """Tasks whose latest settled execution before `before` failed: a streak that began
        before this detector knew the task (its count is unknown, so it starts at 1)."""
        tasks = sorted(t for t in tasks if t in self.catalog.tasks)
        if not tasks:
            return {}
        table = schema.executions
        ranked = (
            sa.select(
                table.c.task,
                table.c.status,
                table.c.updated_at,
                sa.func.row_number().over(partition_by=table.c.task, order_by=table.c.updated_at.desc()).label("n"),
            )
            .where(table.c.task.in_(tasks), table.c.status.in_(SETTLED), table.c.updated_at < before)
            .subquery()
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(ranked.c.task, ranked.c.status, ranked.c.updated_at).where(ranked.c.n == 1)).all()
        return {task: _utc(at) for task, state, at in rows if state in FAILED}

    # -- checks -------------------------------------------------------------------------------------

    def _evaluations(self, cursor: DetectionCursor) -> list[Event]:
        table = schema.evaluations
        after = cursor.evaluations_after or 0
        query = sa.select(table).where(table.c.id > after).order_by(table.c.id).limit(BATCH)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        events = []
        for row in rows:
            cursor.evaluations_after = max(cursor.evaluations_after or 0, int(row["id"]))
            task = self.catalog.tasks.get(row["task"])
            if task is None or row["passed"]:
                continue
            events.append(
                Event(
                    kind="check_failed",
                    subject=f"task:{task.name}",
                    at=aware(row["created_at"]),
                    task=task.name,
                    agent=task.agent,
                    owner=task.owner,
                    facts={
                        "check": row["check_name"],
                        "score": row["score"],
                        "details": _clip(row["details"]),
                        "prompt_version": row["version"],
                        "execution": row["idempotency_key"],
                        "run_id": row["run_id"],
                        "canary": bool(row["canary"]),
                    },
                )
            )
        return events

    # -- agents -------------------------------------------------------------------------------------

    def _agent_health(self, cursor: DetectionCursor, now: dt.datetime) -> list[Event]:
        agents = [name for name in self.catalog.agents]
        health = self.store.agent_health(agents) if agents else {}
        unhealthy = {name: h for name, h in health.items() if not h.healthy}
        events = []
        for name, record in unhealthy.items():
            since = (record.unhealthy_since or now).isoformat()
            if cursor.unhealthy.get(name) != since:
                events.append(
                    Event(
                        kind="agent_unhealthy",
                        subject=f"agent:{name}",
                        at=record.unhealthy_since or now,
                        agent=name,
                        facts={
                            "consecutive_failures": record.consecutive_failures,
                            "last_error": _clip(record.last_error),
                            "unhealthy_since": since,
                            "next_probe_at": record.next_probe_at.isoformat() if record.next_probe_at else None,
                            "tasks": sorted(t.name for t in self.catalog.tasks.values() if t.agent == name),
                        },
                    )
                )
        for name, since in cursor.unhealthy.items():
            if name not in unhealthy and name in self.catalog.agents:
                events.append(
                    Event(kind="recovery", subject=f"agent:{name}", at=now, agent=name, facts={"unhealthy_since": since})
                )
        cursor.unhealthy = {name: (h.unhealthy_since or now).isoformat() for name, h in unhealthy.items()}
        return events

    # -- budgets ------------------------------------------------------------------------------------

    def _budgets(self, cursor: DetectionCursor, now: dt.datetime) -> list[Event]:
        if not self.catalog.budgets and not any(t.budget for t in self.catalog.tasks.values()):
            return []
        today = day_start(now).date().isoformat()
        told = {key for key in cursor.budgets if key.endswith(f"@{today}")}
        events = []
        for overrun in overruns(self.catalog, self.store, now):
            key = f"{overrun.subject}@{today}"
            if key in told:
                continue
            told.add(key)
            kind_word, name = overrun.subject.split(" ")[:2]
            task = self.catalog.tasks.get(name) if kind_word == "task" else None
            budget = self.catalog.budgets.get(name) if kind_word == "budget" else None
            events.append(
                Event(
                    kind="budget_exceeded",
                    subject=f"task:{name}" if task is not None else f"budget:{name}",
                    at=now,
                    task=task.name if task is not None else None,
                    owner=task.owner if task is not None else (budget.owner if budget is not None else None),
                    facts={
                        "description": overrun.describe(),
                        "spent": round(overrun.spent, 6),
                        "limit": overrun.limit,
                        "paused": overrun.pause,
                        "tasks": list(overrun.tasks),
                        "day": today,
                    },
                )
            )
        cursor.budgets = sorted(told)
        return events


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """UTC whatever the session's time zone (PostgreSQL answers in it; SQLite answers naive)."""
    value = aware(value)
    return value.astimezone(dt.UTC) if value is not None else None


def _clip(text: str | None, limit: int = 1000) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


def _execution_facts(row: Mapping[str, Any]) -> dict[str, Any]:
    due = aware(row["due_time"])
    return {
        "execution": row["idempotency_key"],
        "status": row["status"],
        "run_id": row["run_id"] or None,
        "trigger": row["trigger"],
        "attempts": row["attempts"],
        "failure_kind": row["failure_kind"],
        "error": _clip(row["error"]),
        "reason": _clip(row["reason"]),
        "due_time": due.isoformat() if due else None,
        "lateness_s": round(row["lateness_ms"] / 1000.0, 3) if row["lateness_ms"] is not None else None,
        "latency_s": round(row["latency_ms"] / 1000.0, 3) if row["latency_ms"] is not None else None,
    }
