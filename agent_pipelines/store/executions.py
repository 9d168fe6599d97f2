"""Execution records: claims, attempts, settlements, full results, and what a dead run held.

Every state change is one conditional statement, so two processes racing for one execution
(a late run and a rescue, the misfire reconciler and a window run) can never both win: the
idempotency key is the primary key, and each update says which states it moves from.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema, status
from agent_pipelines.store.base import StoreBase, aware, chunks, json_or_none, select_in, utcnow


@dataclass(frozen=True)
class Execution:
    idempotency_key: str
    task: str
    agent: str
    run_id: str
    trigger: str
    status: str
    outcome: str | None
    failure_kind: str | None
    attempts: int
    error: str | None
    reason: str | None
    due_time: dt.datetime | None
    prompt_version: str | None = None
    latency_ms: float | None = None
    cost: float | None = None
    sent_at: dt.datetime | None = None
    lateness_ms: float | None = None
    answered_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    deadline: dt.datetime | None = None
    published_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """The right to start one execution: exactly one claim per idempotency key can exist."""

    idempotency_key: str
    task: str
    agent: str
    run_id: str
    trigger: str
    due_time: dt.datetime | None
    prompt_version: str
    status: str = status.CLAIMED
    reason: str | None = None
    deadline: dt.datetime | None = None
    upstream: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ResultRecord:
    """What an execution sent and what came back, kept in full."""

    prompt: str | None
    system: str | None = None
    output: str | None = None
    model: str | None = None
    session_id: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settlement:
    """The new state of one execution after an attempt (or after deciding not to make one)."""

    key: str
    task: str
    status: str
    run_id: str
    outcome: str | None = None
    failure_kind: str | None = None
    error: str | None = None
    reason: str | None = None
    latency_ms: float | None = None
    sent_at: dt.datetime | None = None
    lateness_ms: float | None = None
    answered_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    result: ResultRecord | None = None
    cost: float | None = None


def _execution(row: Mapping[str, Any]) -> Execution:
    return Execution(
        idempotency_key=row["idempotency_key"],
        task=row["task"],
        agent=row["agent"],
        run_id=row["run_id"],
        trigger=row["trigger"],
        status=row["status"],
        outcome=row["outcome"],
        failure_kind=row["failure_kind"],
        attempts=row["attempts"],
        error=row["error"],
        reason=row["reason"],
        due_time=aware(row["due_time"]),
        prompt_version=row["prompt_version"],
        latency_ms=row["latency_ms"],
        cost=row.get("cost"),
        sent_at=aware(row["sent_at"]),
        lateness_ms=row["lateness_ms"],
        answered_at=aware(row["answered_at"]),
        next_attempt_at=aware(row["next_attempt_at"]),
        deadline=aware(row["deadline"]),
        published_at=aware(row["published_at"]),
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        upstream=json_or_none(row["upstream"]) or {},
    )


class ExecutionRecords(StoreBase):
    # -- claiming ---------------------------------------------------------------------------------

    def claim(self, claims: Sequence[Claim]) -> set[str]:
        """Insert the claims nobody holds yet; return the keys this call won."""
        if not claims:
            return set()
        now = utcnow()
        table = schema.executions
        rows = [
            {
                "idempotency_key": c.idempotency_key,
                "task": c.task,
                "agent": c.agent,
                "run_id": c.run_id,
                "trigger": c.trigger,
                "due_time": c.due_time,
                "prompt_version": c.prompt_version,
                "status": c.status,
                "reason": c.reason,
                "deadline": c.deadline,
                "upstream": json.dumps(dict(c.upstream)) if c.upstream else None,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for c in claims
        ]
        statement = (
            self._insert(table)
            .on_conflict_do_nothing(index_elements=[table.c.idempotency_key])
            .returning(table.c.idempotency_key)
        )
        won: set[str] = set()
        with self.engine.begin() as conn:
            for part in chunks(rows):
                won.update(conn.execute(statement, list(part)).scalars().all())
        return won

    def claim_again(self, claims: Sequence[Claim]) -> set[str]:
        """Claims for a manual launch: a re-execution of a launch is the same execution, so it
        takes the row back from the earlier run unless that row is in flight right now."""
        won = self.claim(claims)
        table = schema.executions
        in_flight = [status.CLAIMED, status.SENDING, status.RETRYING]
        with self.engine.begin() as conn:
            for c in claims:
                if c.idempotency_key in won:
                    continue
                row = conn.execute(
                    table.update()
                    .where(table.c.idempotency_key == c.idempotency_key, table.c.status.not_in(in_flight))
                    .values(status=status.CLAIMED, run_id=c.run_id, reason=None, prompt_version=c.prompt_version, updated_at=utcnow())
                    .returning(table.c.idempotency_key)
                ).first()
                if row is not None:
                    won.add(c.idempotency_key)
        return won

    def decide(self, claims: Sequence[Claim]) -> set[str]:
        """The misfire policy's decisions (`missed`, `catchup`) for due times nobody sent in
        time: rows that do not exist yet, or that a dead run left `not_sent`."""
        won = self.claim(claims)
        table = schema.executions
        with self.engine.begin() as conn:
            for c in claims:
                if c.idempotency_key in won:
                    continue
                row = conn.execute(
                    table.update()
                    .where(table.c.idempotency_key == c.idempotency_key, table.c.status == status.NOT_SENT, table.c.run_id == "")
                    .values(status=c.status, reason=sa.func.coalesce(table.c.reason + "; ", "") + (c.reason or ""), updated_at=utcnow())
                    .returning(table.c.idempotency_key)
                ).first()
                if row is not None:
                    won.add(c.idempotency_key)
        return won

    def held_by_runs(self, tasks: Sequence[str] | None = None) -> dict[str, int]:
        """Run id -> how many executions (of `tasks`, when given) it holds (claimed, sending, retrying)."""
        table = schema.executions
        statement = (
            sa.select(table.c.run_id, sa.func.count())
            .where(table.c.status.in_(sorted(status.HELD)), table.c.run_id != "")
            .group_by(table.c.run_id)
        )
        held: collections.Counter[str] = collections.Counter()
        with self.engine.connect() as conn:
            for run_id, count in select_in(conn, statement, table.c.task, tasks):  # a run's count per chunk: summed
                held[run_id] += int(count)
        return dict(held)

    def take_over(self, keys: Sequence[str], run_id: str, now: dt.datetime) -> set[str]:
        """Claim executions waiting for a carrier (catch-ups, unsent claims of a dead run,
        retries whose run is gone), unless their deadline has passed."""
        table = schema.executions
        won: set[str] = set()
        with self.engine.begin() as conn:
            for part in chunks(list(keys)):
                won.update(
                    conn.execute(
                        table.update()
                        .where(
                            table.c.idempotency_key.in_(list(part)),
                            table.c.status.in_(sorted(status.TAKEABLE)),
                            table.c.run_id.in_(["", run_id]),
                            sa.or_(table.c.deadline.is_(None), table.c.deadline > now),
                        )
                        .values(status=status.CLAIMED, run_id=run_id, updated_at=utcnow())
                        .returning(table.c.idempotency_key)
                    ).scalars().all()
                )
        return won

    def start_attempts(self, keys: Sequence[str], run_id: str, at: dt.datetime) -> dict[str, int]:
        """Mark executions `sending` before their requests leave; returns each one's attempt
        number. A key missing from the result is not this run's to send any more."""
        table = schema.executions
        started: dict[str, int] = {}
        with self.engine.begin() as conn:
            for part in chunks(list(keys)):
                rows = conn.execute(
                    table.update()
                    .where(
                        table.c.idempotency_key.in_(list(part)),
                        table.c.run_id == run_id,
                        table.c.status.in_([status.CLAIMED, status.RETRYING]),
                    )
                    .values(status=status.SENDING, attempts=table.c.attempts + 1, sent_at=at, updated_at=utcnow())
                    .returning(table.c.idempotency_key, table.c.attempts)
                ).all()
                started.update({row[0]: int(row[1]) for row in rows})
        return started

    def carry_batch(self, key: str, run_id: str, at: dt.datetime) -> Execution | None:
        """A batch run takes its execution (claimed by `batch_trigger_sensor`, or ended earlier:
        a re-execution resumes it) and marks it `sending`. None while another run carries it."""
        table = schema.executions
        with self.engine.begin() as conn:
            row = conn.execute(
                table.update()
                .where(
                    table.c.idempotency_key == key,
                    sa.or_(table.c.status.not_in([status.SENDING, status.RETRYING]), table.c.run_id == run_id),
                )
                .values(status=status.SENDING, run_id=run_id, attempts=table.c.attempts + 1, sent_at=at, reason=None, updated_at=utcnow())
                .returning(table.c.idempotency_key)
            ).first()
        return self.get_execution(key) if row is not None else None

    def unstarted_claims(self, tasks: Sequence[str], limit: int = 1000) -> list[Execution]:
        """Claims of these tasks that no run has taken yet (batch triggers), oldest first."""
        table = schema.executions
        claims = [
            claim
            for part in chunks(list(tasks))
            for claim in self._executions(
                sa.and_(table.c.task.in_(part), table.c.status == status.CLAIMED, table.c.run_id == ""),
                limit=limit,
                order=table.c.created_at,
            )
        ]
        return sorted(claims, key=lambda claim: claim.created_at or dt.datetime.min.replace(tzinfo=dt.timezone.utc))[:limit]

    def close_unstarted(self, key: str, state: str, reason: str) -> bool:
        """Decide a claim no run took (`missed`, `skipped`): false when a run took it meanwhile."""
        table = schema.executions
        with self.engine.begin() as conn:
            row = conn.execute(
                table.update()
                .where(table.c.idempotency_key == key, table.c.status == status.CLAIMED, table.c.run_id == "")
                .values(status=state, reason=reason, updated_at=utcnow())
                .returning(table.c.idempotency_key)
            ).first()
        return row is not None

    # -- settling ---------------------------------------------------------------------------------

    def settle(self, settlements: Sequence[Settlement]) -> None:
        """Record attempts' outcomes (and full results) in one transaction.

        A row is only changed by the run that holds it, or when a dead-run sweep already called
        it `unknown`: the real answer, arriving late, replaces that guess.
        """
        if not settlements:
            return
        table = schema.executions
        now = utcnow()
        update = (
            table.update()
            .where(
                table.c.idempotency_key == sa.bindparam("b_key"),
                sa.or_(table.c.run_id == sa.bindparam("b_run_id"), table.c.status == status.UNKNOWN),
            )
            .values(
                status=sa.bindparam("b_status"),
                # `not_sent` is released at once: any run may take it while it is worth trying.
                run_id=sa.bindparam("b_carrier"),
                outcome=sa.bindparam("b_outcome"),
                failure_kind=sa.bindparam("b_failure_kind"),
                error=sa.bindparam("b_error"),
                reason=sa.bindparam("b_reason"),
                latency_ms=sa.bindparam("b_latency_ms"),
                cost=sa.func.coalesce(sa.bindparam("b_cost", type_=sa.Float), table.c.cost),
                sent_at=sa.func.coalesce(sa.bindparam("b_sent_at", type_=table.c.sent_at.type), table.c.sent_at),
                lateness_ms=sa.func.coalesce(sa.bindparam("b_lateness_ms", type_=sa.Float), table.c.lateness_ms),
                answered_at=sa.bindparam("b_answered_at", type_=table.c.answered_at.type),
                next_attempt_at=sa.bindparam("b_next_attempt_at", type_=table.c.next_attempt_at.type),
                updated_at=now,
            )
        )
        rows = [
            {
                "b_key": s.key,
                "b_run_id": s.run_id,
                "b_carrier": "" if s.status == status.NOT_SENT else s.run_id,
                "b_status": s.status,
                "b_outcome": s.outcome,
                "b_failure_kind": s.failure_kind,
                "b_error": s.error,
                "b_reason": s.reason,
                "b_latency_ms": s.latency_ms,
                "b_cost": s.cost,
                "b_sent_at": s.sent_at,
                "b_lateness_ms": s.lateness_ms,
                "b_answered_at": s.answered_at,
                "b_next_attempt_at": s.next_attempt_at,
            }
            for s in settlements
        ]
        results = [
            {
                "idempotency_key": s.key,
                "task": s.task,
                "prompt": s.result.prompt,
                "system": s.result.system,
                "output": s.result.output,
                "model": s.result.model,
                "session_id": s.result.session_id,
                "tokens_in": s.result.tokens_in,
                "tokens_out": s.result.tokens_out,
                "details": json.dumps(dict(s.result.details), default=str),
                "created_at": now,
                "b_execution": s.key,
            }
            for s in settlements
            if s.result is not None
        ]
        # Execution records sort text matches by this copy of the execution's created_at.
        execution_created_at = (
            sa.select(table.c.created_at).where(table.c.idempotency_key == sa.bindparam("b_execution")).scalar_subquery()
        )
        with self.engine.begin() as conn:
            conn.execute(update, rows)
            if results:
                statement = self._insert(schema.results).values(execution_created_at=execution_created_at)
                statement = statement.on_conflict_do_update(
                    index_elements=[schema.results.c.idempotency_key],
                    set_={
                        name: statement.excluded[name]
                        for name in [*results[0], "execution_created_at"]
                        if name not in ("idempotency_key", "b_execution")
                    },
                )
                conn.execute(statement, results)

    def mark_published(self, keys: Sequence[str], at: dt.datetime) -> None:
        table = schema.executions
        with self.engine.begin() as conn:
            for part in chunks(list(keys)):
                conn.execute(table.update().where(table.c.idempotency_key.in_(list(part))).values(published_at=at))

    def unpublished(self, settled_before: dt.datetime, limit: int = 500) -> list[Execution]:
        """Finished executions whose result never reached Dagster (their run died in between)."""
        table = schema.executions
        return self._executions(
            sa.and_(
                table.c.status.in_([status.SUCCEEDED, status.FAILED, status.UNKNOWN]),
                table.c.published_at.is_(None),
                table.c.updated_at < settled_before,
            ),
            limit=limit,
            order=table.c.updated_at,
        )

    # -- runs that end ----------------------------------------------------------------------------

    def release_run(self, run_id: str, why: str) -> list[Execution]:
        """Settle what a run held when it ended without finishing (killed, stopped, lost).

        Claims it had not started were provably never sent: `not_sent`, which another run may
        take over while the execution is still worth trying. Requests it had started may have
        reached the agent: `unknown`, never sent again. Retries it was waiting to make lose their
        carrier and wait for another.
        """
        table = schema.executions
        now = utcnow()
        with self.engine.begin() as conn:
            keys = list(
                conn.execute(
                    table.update()
                    .where(table.c.run_id == run_id, table.c.status == status.CLAIMED)
                    .values(status=status.NOT_SENT, run_id="", reason=f"{why}; never sent", updated_at=now)
                    .returning(table.c.idempotency_key)
                ).scalars()
            )
            keys += conn.execute(
                table.update()
                .where(table.c.run_id == run_id, table.c.status == status.SENDING)
                .values(
                    status=status.UNKNOWN,
                    outcome="unknown",
                    failure_kind="interrupted",
                    reason=f"{why} after the request left, before its answer was recorded: the agent may have acted",
                    updated_at=now,
                )
                .returning(table.c.idempotency_key)
            ).scalars().all()
            keys += conn.execute(
                table.update()
                .where(table.c.run_id == run_id, table.c.status == status.RETRYING)
                .values(run_id="", reason=f"{why} while waiting to retry; another run takes the retry", updated_at=now)
                .returning(table.c.idempotency_key)
            ).scalars().all()
        return self._executions(table.c.idempotency_key.in_(keys)) if keys else []

    def waiting_for_carrier(self, now: dt.datetime, ready_by: dt.datetime, limit: int = 5000) -> list[Execution]:
        """Executions no live run carries that are still worth trying and due by `ready_by`."""
        table = schema.executions
        return self._executions(
            sa.and_(
                table.c.status.in_(sorted(status.TAKEABLE)),
                table.c.run_id == "",
                sa.or_(table.c.deadline.is_(None), table.c.deadline > now),
                sa.or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= ready_by),
            ),
            limit=limit,
            order=table.c.due_time,
        )

    def unsent_scheduled(self, due_before: dt.datetime, limit: int = 5000) -> list[Execution]:
        """Scheduled executions a dead run claimed but never sent, due before `due_before`."""
        table = schema.executions
        return self._executions(
            sa.and_(
                table.c.status == status.NOT_SENT,
                table.c.run_id == "",
                table.c.trigger == "schedule",
                table.c.due_time < due_before,
            ),
            limit=limit,
            order=table.c.due_time,
        )

    def expire_waiting(self, now: dt.datetime) -> list[Execution]:
        """Executions that waited for a carrier past their deadline end for good, with why."""
        table = schema.executions
        expired = sa.and_(table.c.run_id == "", table.c.deadline.is_not(None), table.c.deadline <= now)
        changes = (
            (status.NOT_SENT, status.NOT_SENT, "its deadline passed before another run could send it"),
            (status.CATCHUP, status.MISSED, "its catch-up could not be sent before its deadline"),
            (status.RETRYING, status.FAILED, "its deadline passed before the retry could be sent"),
        )
        keys: list[str] = []
        with self.engine.begin() as conn:
            for old, new, why in changes:
                keys += conn.execute(
                    table.update()
                    .where(expired, table.c.status == old, sa.or_(table.c.reason.is_(None), ~table.c.reason.contains(why)))
                    .values(
                        status=new,
                        reason=sa.func.coalesce(table.c.reason + "; ", "") + why,
                        updated_at=utcnow(),
                    )
                    .returning(table.c.idempotency_key)
                ).scalars().all()
        return self._executions(table.c.idempotency_key.in_(keys)) if keys else []

    # -- reading ----------------------------------------------------------------------------------

    def get_execution(self, idempotency_key: str) -> Execution | None:
        found = self._executions(schema.executions.c.idempotency_key == idempotency_key)
        return found[0] if found else None

    def executions_for_run(self, run_id: str) -> list[Execution]:
        return self._executions(schema.executions.c.run_id == run_id)

    def executions_for_task(self, task: str, limit: int = 1000) -> list[Execution]:
        table = schema.executions
        return self._executions(table.c.task == task, limit=limit, order=table.c.created_at.desc())

    def executions_with_status(self, wanted: str, limit: int = 1000) -> list[Execution]:
        return self._executions(schema.executions.c.status == wanted, limit=limit)

    def sending_of_task(self, task: str, other_than_run: str = "") -> dict[str, dt.datetime | None]:
        """Idempotency key -> when it was sent, for `task`'s executions in flight in other runs."""
        return self.sending_of_tasks([task], other_than_run).get(task, {})

    def sending_of_tasks(self, tasks: Sequence[str], other_than_run: str = "") -> dict[str, dict[str, dt.datetime | None]]:
        """Per task: idempotency key -> when it was sent, of its executions in flight in other runs."""
        table = schema.executions
        found: dict[str, dict[str, dt.datetime | None]] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(tasks)):
                rows = conn.execute(
                    sa.select(table.c.task, table.c.idempotency_key, table.c.sent_at).where(
                        table.c.status == status.SENDING, table.c.task.in_(list(part)), table.c.run_id != other_than_run
                    )
                ).all()
                for row in rows:
                    found.setdefault(row.task, {})[row.idempotency_key] = aware(row.sent_at) if row.sent_at else None
        return found

    def statuses(self, keys: Sequence[str]) -> dict[str, str]:
        """Status of each key that has a row (claimed or executed)."""
        table = schema.executions
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(keys)):
                rows = conn.execute(
                    sa.select(table.c.idempotency_key, table.c.status).where(table.c.idempotency_key.in_(list(part)))
                ).all()
                found.update({row.idempotency_key: row.status for row in rows})
        return found

    def latest_outcomes(self, tasks: Sequence[str]) -> dict[str, bool]:
        """Whether each task's most recent finished execution succeeded."""
        table = schema.executions
        finished = [status.SUCCEEDED, status.FAILED, status.UNKNOWN, status.SKIPPED, status.NOT_SENT]
        newest = (
            sa.select(table.c.task, sa.func.max(table.c.updated_at).label("at"))
            .where(table.c.task.in_(sa.bindparam("tasks", expanding=True)), table.c.status.in_(finished))
            .group_by(table.c.task)
            .subquery()
        )
        statement = sa.select(table.c.task, table.c.status).join(
            newest, sa.and_(table.c.task == newest.c.task, table.c.updated_at == newest.c.at)
        )
        found: dict[str, bool] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(tasks)):
                for row in conn.execute(statement, {"tasks": list(part)}):
                    found[row.task] = row.status == status.SUCCEEDED
        return found

    def latest_success(self, task: str, run_id: str | None = None) -> Execution | None:
        """The newest succeeded execution of a task (in one run, when given)."""
        table = schema.executions
        where = sa.and_(table.c.task == task, table.c.status == status.SUCCEEDED)
        if run_id is not None:
            where = sa.and_(where, table.c.run_id == run_id)
        found = self._executions(where, limit=1, order=table.c.answered_at.desc())
        return found[0] if found else None

    def results(self, keys: Sequence[str]) -> dict[str, ResultRecord]:
        table = schema.results
        found: dict[str, ResultRecord] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(keys)):
                for row in conn.execute(sa.select(table).where(table.c.idempotency_key.in_(list(part)))).mappings():
                    found[row["idempotency_key"]] = ResultRecord(
                        prompt=row["prompt"],
                        system=row["system"],
                        output=row["output"],
                        model=row["model"],
                        session_id=row["session_id"],
                        tokens_in=row["tokens_in"],
                        tokens_out=row["tokens_out"],
                        details=json_or_none(row["details"]) or {},
                    )
        return found

    def _executions(
        self, where: sa.ColumnElement[bool], limit: int | None = None, order: Any = None
    ) -> list[Execution]:
        statement = sa.select(schema.executions).where(where)
        if order is not None:
            statement = statement.order_by(order)
        if limit is not None:
            statement = statement.limit(limit)
        with self.engine.connect() as conn:
            return [_execution(row) for row in conn.execute(statement).mappings()]
