"""Access to agent_pipelines' own tables, wherever the Dagster instance keeps its storage."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent_pipelines.store import schema
from agent_pipelines.store.migrate import ensure_migrated

if TYPE_CHECKING:
    from dagster import DagsterInstance

STATE_DB_FILENAME = "agent_pipelines.db"


#: failure_kind of an execution whose run died while it was in flight (see `release_dead_run`).
INTERRUPTED = "interrupted"
#: Statuses the misfire reconciler gives a claim nobody started: no run may start it after that.
RECONCILED_STATUSES = ("missed", "catchup")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def url_for_instance(instance: DagsterInstance) -> str:
    """The instance's PostgreSQL database when it has one, else a SQLite file in DAGSTER_HOME."""
    postgres_url = getattr(instance.run_storage, "postgres_url", None)
    if postgres_url:
        return postgres_url
    return f"sqlite:///{Path(instance.root_directory) / STATE_DB_FILENAME}"


@dataclass(frozen=True)
class Execution:
    idempotency_key: str
    task: str
    run_id: str
    status: str
    outcome: str | None
    failure_kind: str | None
    attempts: int
    error: str | None
    due_time: dt.datetime | None
    latency_ms: float | None = None


def sqlalchemy_url(url: str) -> str:
    """Dagster's `postgresql://` URLs mean psycopg2 (installed with dagster-postgres), while
    SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    source: str
    type: str
    payload: dict[str, Any]
    received_at: dt.datetime

    def as_template_value(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "source": self.source,
            "type": self.type,
            "payload": self.payload,
            "received_at": self.received_at,
        }


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
    status: str = "claimed"


@dataclass(frozen=True)
class TaskState:
    task: str
    paused: bool
    reason: str | None
    changed_by: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class RunNowRequest:
    id: int
    task: str
    requested_by: str | None
    variables: dict[str, Any]
    requested_at: dt.datetime


def _create_engine(url: str) -> sa.Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the webserver read while run workers write; busy_timeout rides out the
            # short write locks taken by concurrent runs instead of failing them.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


class StateStore:
    """Execution records and task sessions; one per database URL per process."""

    _instances: dict[str, StateStore] = {}
    _lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        ensure_migrated(self.engine)
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def for_url(cls, url: str) -> StateStore:
        with cls._lock:
            if url not in cls._instances:
                cls._instances[url] = cls(url)
            return cls._instances[url]

    @classmethod
    def for_instance(cls, instance: DagsterInstance) -> StateStore:
        return cls.for_url(url_for_instance(instance))

    # -- executions ---------------------------------------------------------------------------

    def begin_attempt(
        self,
        *,
        idempotency_key: str,
        task: str,
        agent: str,
        run_id: str,
        trigger: str,
        due_time: dt.datetime | None,
        prompt_version: str,
    ) -> int:
        """Record one more attempt of an execution; return how many attempts it has had (0: the
        misfire reconciler has decided it, do not send)."""
        row = {
            "idempotency_key": idempotency_key,
            "task": task,
            "agent": agent,
            "run_id": run_id,
            "trigger": trigger,
            "due_time": due_time,
            "prompt_version": prompt_version,
        }
        return self.begin_attempts([row]).get(idempotency_key, 0)

    def begin_attempts(self, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
        """`begin_attempt` for many executions in one transaction (a burst of due tasks).

        Executions the misfire reconciler has taken over (`missed`, `catchup`) are left out.
        """
        if not rows:
            return {}
        now = utcnow()
        table = schema.executions
        statement = self._insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.idempotency_key],
            set_={
                "attempts": table.c.attempts + 1,
                "status": "running",
                "run_id": statement.excluded.run_id,
                "prompt_version": statement.excluded.prompt_version,
                "updated_at": now,
            },
            # A claim the misfire reconciler has meanwhile decided (its run looked dead) stays
            # decided: the key is then missing from the result and the caller does not send.
            # (no IN list: expanding parameters are not allowed in an executemany)
            where=sa.and_(*(table.c.status != status for status in RECONCILED_STATUSES)),
        ).returning(table.c.idempotency_key, table.c.attempts)
        values = [{**row, "status": "running", "attempts": 1, "created_at": now, "updated_at": now} for row in rows]
        with self.engine.begin() as conn:
            return {key: int(attempts) for key, attempts in conn.execute(statement, values).all()}

    def finish_attempt(
        self,
        idempotency_key: str,
        *,
        succeeded: bool,
        outcome: str,
        failure_kind: str | None = None,
        error: str | None = None,
        latency_ms: float | None = None,
    ) -> None:
        table = schema.executions
        with self.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.idempotency_key == idempotency_key)
                .values(
                    status="succeeded" if succeeded else "failed",
                    outcome=outcome,
                    failure_kind=failure_kind,
                    error=error,
                    latency_ms=latency_ms,
                    updated_at=utcnow(),
                )
            )

    def get_execution(self, idempotency_key: str) -> Execution | None:
        found = self._executions(schema.executions.c.idempotency_key == idempotency_key)
        return found[0] if found else None

    def executions_for_run(self, run_id: str) -> list[Execution]:
        return self._executions(schema.executions.c.run_id == run_id)

    def _executions(self, where: sa.ColumnElement[bool]) -> list[Execution]:
        table = schema.executions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(where)).mappings().all()
        return [
            Execution(
                idempotency_key=row["idempotency_key"],
                task=row["task"],
                run_id=row["run_id"],
                status=row["status"],
                outcome=row["outcome"],
                failure_kind=row["failure_kind"],
                attempts=row["attempts"],
                error=row["error"],
                due_time=_aware(row["due_time"]),
                latency_ms=row["latency_ms"],
            )
            for row in rows
        ]

    # -- claims ---------------------------------------------------------------------------------

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
        with self.engine.begin() as conn:
            return set(conn.execute(statement, rows).scalars().all())

    def take_over_catchup(self, idempotency_key: str, run_id: str) -> bool:
        """A catch-up run takes the claim the misfire reconciler reserved for it."""
        table = schema.executions
        with self.engine.begin() as conn:
            result = conn.execute(
                table.update()
                .where(table.c.idempotency_key == idempotency_key, table.c.status == "catchup")
                .values(status="claimed", run_id=run_id, updated_at=utcnow())
            )
        return result.rowcount == 1

    def reassign_stale_claims(self, keys: Sequence[str], status: str) -> set[str]:
        """Claims taken but never started (their run died): hand them to the misfire policy."""
        if not keys:
            return set()
        table = schema.executions
        with self.engine.begin() as conn:
            updated = conn.execute(
                table.update()
                .where(table.c.idempotency_key.in_(list(keys)), table.c.status == "claimed", table.c.attempts == 0)
                .values(status=status, run_id="", updated_at=utcnow())
                .returning(table.c.idempotency_key)
            ).scalars().all()
        return set(updated)

    # -- run heartbeats -------------------------------------------------------------------------

    def beat(self, run_id: str) -> None:
        """A live run says so (see `agent_pipelines.heartbeat`)."""
        table = schema.run_heartbeats
        now = utcnow()
        statement = self._insert(table).values(run_id=run_id, beat_at=now)
        statement = statement.on_conflict_do_update(index_elements=[table.c.run_id], set_={"beat_at": now})
        with self.engine.begin() as conn:
            conn.execute(statement)

    def forget_beats(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        table = schema.run_heartbeats
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id.in_(list(run_ids))))

    def last_beats(self, run_ids: Sequence[str]) -> dict[str, dt.datetime]:
        table = schema.run_heartbeats
        found: dict[str, dt.datetime] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start : start + 500])
                rows = conn.execute(sa.select(table.c.run_id, table.c.beat_at).where(table.c.run_id.in_(chunk))).all()
                found.update({row.run_id: _aware(row.beat_at) for row in rows})
        return found

    def release_dead_run(self, run_id: str, *, catchup: bool) -> list[Execution]:
        """Settle what a dead run held; return the executions changed.

        Requests in flight have an unknown outcome (the agent may have acted): they fail as
        `interrupted` and are never sent again. Claims a catch-up run took but never sent go
        back to `catchup` for another catch-up run; a window run's unsent claims are left to
        the misfire reconciler, which treats them as missed.
        """
        table = schema.executions
        now = utcnow()
        with self.engine.begin() as conn:
            keys = conn.execute(
                table.update()
                .where(table.c.run_id == run_id, table.c.status == "running")
                .values(
                    status="failed",
                    outcome="unknown",
                    failure_kind=INTERRUPTED,
                    error=f"run {run_id} died (killed or its machine lost) while the request was in flight",
                    updated_at=now,
                )
                .returning(table.c.idempotency_key)
            ).scalars().all()
            if catchup:
                keys += conn.execute(
                    table.update()
                    .where(table.c.run_id == run_id, table.c.status == "claimed", table.c.attempts == 0)
                    .values(status="catchup", run_id="", updated_at=now)
                    .returning(table.c.idempotency_key)
                ).scalars().all()
        return self._executions(table.c.idempotency_key.in_(keys)) if keys else []

    def give_up_catchup(self, idempotency_key: str, reason: str) -> None:
        table = schema.executions
        with self.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.idempotency_key == idempotency_key, table.c.status == "catchup")
                .values(status="failed", outcome="failed", failure_kind="catchup_failed", error=reason, updated_at=utcnow())
            )

    def executions_with_status(self, status: str, limit: int = 1000) -> list[Execution]:
        table = schema.executions
        with self.engine.connect() as conn:
            keys = conn.execute(
                sa.select(table.c.idempotency_key).where(table.c.status == status).limit(limit)
            ).scalars().all()
        return self._executions(table.c.idempotency_key.in_(keys)) if keys else []

    def statuses(self, keys: Sequence[str]) -> dict[str, str]:
        """Status of each key that has a row (claimed or executed)."""
        table = schema.executions
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                rows = conn.execute(
                    sa.select(table.c.idempotency_key, table.c.status).where(table.c.idempotency_key.in_(chunk))
                ).all()
                found.update({row.idempotency_key: row.status for row in rows})
        return found

    def mark_sent(self, sent: Sequence[tuple[str, dt.datetime, float | None]]) -> None:
        """Record when requests left, and their lateness against the due time."""
        if not sent:
            return
        table = schema.executions
        statement = (
            table.update()
            .where(table.c.idempotency_key == sa.bindparam("key"))
            .values(sent_at=sa.bindparam("sent_at"), lateness_ms=sa.bindparam("lateness_ms"))
        )
        with self.engine.begin() as conn:
            conn.execute(statement, [{"key": k, "sent_at": t, "lateness_ms": late} for k, t, late in sent])

    def executions_for_task(self, task: str, limit: int = 1000) -> list[Execution]:
        table = schema.executions
        with self.engine.connect() as conn:
            keys = conn.execute(
                sa.select(table.c.idempotency_key)
                .where(table.c.task == task)
                .order_by(table.c.created_at.desc())
                .limit(limit)
            ).scalars().all()
        found = {e.idempotency_key: e for e in self._executions(table.c.idempotency_key.in_(keys))}
        return [found[k] for k in keys if k in found]

    # -- events -----------------------------------------------------------------------------------

    def insert_event(self, *, event_id: str, source: str, type: str, payload: dict[str, Any]) -> tuple[StoredEvent, bool]:
        """Store an event durably; a repeated id returns the stored one and False."""
        table = schema.events
        now = utcnow()
        statement = (
            self._insert(table)
            .values(event_id=event_id, source=source, type=type, payload=json.dumps(payload), received_at=now)
            .on_conflict_do_nothing(index_elements=[table.c.event_id])
            .returning(table.c.seq)
        )
        with self.engine.begin() as conn:
            seq = conn.execute(statement).scalar()
        if seq is not None:
            return StoredEvent(seq, event_id, source, type, payload, now), True
        existing = self.get_event(event_id)
        assert existing is not None
        return existing, False

    def get_event(self, event_id: str) -> StoredEvent | None:
        found = self._events(schema.events.c.event_id == event_id, limit=1)
        return found[0] if found else None

    def last_event_seq_before(self, moment: dt.datetime) -> int:
        """The newest event `seq` received before `moment` (0 when none)."""
        table = schema.events
        with self.engine.connect() as conn:
            seq = conn.execute(sa.select(sa.func.max(table.c.seq)).where(table.c.received_at < moment)).scalar()
        return int(seq or 0)

    def events_after(self, seq: int, limit: int = 500) -> list[StoredEvent]:
        return self._events(schema.events.c.seq > seq, limit=limit)

    def _events(self, where: sa.ColumnElement[bool], limit: int) -> list[StoredEvent]:
        table = schema.events
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(where).order_by(table.c.seq).limit(limit)).mappings().all()
        return [
            StoredEvent(
                seq=row["seq"],
                event_id=row["event_id"],
                source=row["source"],
                type=row["type"],
                payload=json.loads(row["payload"]),
                received_at=_aware(row["received_at"]),  # type: ignore[arg-type]
            )
            for row in rows
        ]

    # -- task states and run-now requests -------------------------------------------------------

    def set_paused(self, task: str, paused: bool, *, reason: str | None = None, changed_by: str | None = None) -> None:
        table = schema.task_states
        now = utcnow()
        values = {"paused": paused, "reason": reason, "changed_by": changed_by, "updated_at": now}
        statement = self._insert(table).values(task=task, **values)
        statement = statement.on_conflict_do_update(index_elements=[table.c.task], set_=values)
        with self.engine.begin() as conn:
            conn.execute(statement)

    def task_states(self) -> dict[str, TaskState]:
        table = schema.task_states
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table)).mappings().all()
        return {
            row["task"]: TaskState(
                row["task"], row["paused"], row["reason"], row["changed_by"], _aware(row["updated_at"])  # type: ignore[arg-type]
            )
            for row in rows
        }

    def paused_tasks(self) -> set[str]:
        table = schema.task_states
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(table.c.task).where(table.c.paused.is_(True))).scalars().all())

    def add_run_request(self, task: str, *, requested_by: str | None = None, variables: dict[str, Any] | None = None) -> int:
        table = schema.run_requests
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    table.insert()
                    .values(
                        task=task,
                        requested_by=requested_by,
                        variables=json.dumps(variables or {}),
                        requested_at=utcnow(),
                    )
                    .returning(table.c.id)
                ).scalar_one()
            )

    def pending_run_requests(self, limit: int = 100) -> list[RunNowRequest]:
        table = schema.run_requests
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table).where(table.c.launched_at.is_(None)).order_by(table.c.id).limit(limit)
            ).mappings().all()
        return [
            RunNowRequest(row["id"], row["task"], row["requested_by"], json.loads(row["variables"] or "{}"), _aware(row["requested_at"]))  # type: ignore[arg-type]
            for row in rows
        ]

    def mark_run_requests_launched(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        table = schema.run_requests
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.id.in_(list(ids))).values(launched_at=utcnow()))

    # -- sessions -------------------------------------------------------------------------------

    def session_remote_id(self, task: str, agent: str) -> str | None:
        """The agent's own session id for a task, if the task last talked to this agent."""
        table = schema.task_sessions
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.remote_id, table.c.agent).where(table.c.task == task)
            ).first()
        return row.remote_id if row is not None and row.agent == agent else None

    def save_session(self, task: str, agent: str, remote_id: str) -> None:
        table = schema.task_sessions
        now = utcnow()
        statement = self._insert(table).values(task=task, agent=agent, remote_id=remote_id, updated_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.task],
            set_={"agent": agent, "remote_id": remote_id, "updated_at": now},
        )
        with self.engine.begin() as conn:
            conn.execute(statement)

    def clear_session(self, task: str) -> None:
        """Forget a task's remote session id, so the next run starts a new conversation."""
        with self.engine.begin() as conn:
            conn.execute(schema.task_sessions.delete().where(schema.task_sessions.c.task == task))

    def history(self, task: str, turns: int) -> list[tuple[str, str]]:
        """The last `turns` user/assistant pairs of a task's conversation, oldest first."""
        if turns <= 0:
            return []
        table = schema.session_messages
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.role, table.c.content)
                .where(table.c.task == task)
                .order_by(table.c.id.desc())
                .limit(turns * 2)
            ).all()
        return [(row.role, row.content) for row in reversed(rows)]

    def append_history(self, task: str, run_id: str, messages: Iterable[tuple[str, str]]) -> None:
        now = utcnow()
        rows: Sequence[dict[str, Any]] = [
            {"task": task, "role": role, "content": content, "run_id": run_id, "created_at": now}
            for role, content in messages
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(schema.session_messages.insert(), list(rows))
