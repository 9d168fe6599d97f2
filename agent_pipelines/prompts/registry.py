"""The prompt registry: every prompt a task has used, who made it, why, and which one is live.

Versions are content hashes with a per-task sequence number. A version's `base_version` is the
catalog version it descends from: a tuned or rolled-back version applies only while the catalog
still declares its base, so a person editing the catalog always wins over the tuner. Every
change of status is an event in `agent_pipelines_prompt_events`, the audit trail.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agent_pipelines.store import StateStore, schema
from agent_pipelines.store.base import aware as _aware, utcnow

if TYPE_CHECKING:
    from agent_pipelines.catalog.loader import Catalog

REASONS = ("catalog", "tuner", "manual", "rollback")


@dataclass(frozen=True)
class PromptVersion:
    task: str
    version: str
    seq: int
    parent_version: str | None
    base_version: str
    author: str | None
    reason: str
    status: str
    prompt: str
    system: str | None
    parameters: dict[str, Any]
    motivation: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class PromptEvent:
    task: str
    version: str
    action: str
    actor: str | None
    details: dict[str, Any]
    at: dt.datetime


class RegistryError(ValueError):
    """A registry action that cannot be done (unknown version, nothing to roll back to...)."""


class PromptRegistry:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.engine = store.engine

    # -- reading --------------------------------------------------------------------------------

    def _rows(self, where: sa.ColumnElement[bool]) -> list[PromptVersion]:
        table = schema.prompt_versions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(where).order_by(table.c.task, table.c.seq)).mappings().all()
        return [
            PromptVersion(
                task=row["task"],
                version=row["version"],
                seq=row["seq"],
                parent_version=row["parent_version"],
                base_version=row["base_version"],
                author=row["author"],
                reason=row["reason"],
                status=row["status"],
                prompt=row["prompt"],
                system=row["system"],
                parameters=json.loads(row["parameters"]),
                motivation=json.loads(row["motivation"]),
                created_at=_aware(row["created_at"]),  # type: ignore[arg-type]
            )
            for row in rows
        ]

    def versions(self, task: str) -> list[PromptVersion]:
        return self._rows(schema.prompt_versions.c.task == task)

    def get(self, task: str, version: str) -> PromptVersion | None:
        table = schema.prompt_versions
        found = self._rows(sa.and_(table.c.task == task, table.c.version == version))
        return found[0] if found else None

    def with_status(self, status: str, tasks: Iterable[str] | None = None) -> dict[str, PromptVersion]:
        table = schema.prompt_versions
        where = table.c.status == status
        if tasks is not None:
            where = sa.and_(where, table.c.task.in_(list(tasks)))
        return {row.task: row for row in self._rows(where)}

    def active(self, task: str) -> PromptVersion | None:
        return self.with_status("active", [task]).get(task)

    def candidate(self, task: str) -> PromptVersion | None:
        return self.with_status("candidate", [task]).get(task)

    def events(self, task: str) -> list[PromptEvent]:
        table = schema.prompt_events
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.task == task).order_by(table.c.id)).mappings().all()
        return [
            PromptEvent(r["task"], r["version"], r["action"], r["actor"], json.loads(r["details"]), _aware(r["at"]))  # type: ignore[arg-type]
            for r in rows
        ]

    def proposals_since(self, task: str, since: dt.datetime) -> int:
        table = schema.prompt_versions
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(table)
                    .where(table.c.task == task, table.c.reason == "tuner", table.c.created_at >= since)
                ).scalar_one()
            )

    # -- writing --------------------------------------------------------------------------------

    def _event(self, conn: sa.Connection, task: str, version: str, action: str, actor: str | None, **details: Any) -> None:
        conn.execute(
            schema.prompt_events.insert().values(
                task=task, version=version, action=action, actor=actor or getpass.getuser(), details=json.dumps(details, default=str), at=utcnow()
            )
        )

    def register(
        self,
        task: str,
        *,
        version: str,
        prompt: str,
        system: str | None,
        parameters: Mapping[str, Any],
        reason: str,
        base_version: str,
        parent_version: str | None = None,
        status: str = "candidate",
        author: str | None = None,
        motivation: Mapping[str, Any] | None = None,
    ) -> PromptVersion:
        """Add a version (idempotent: an existing version of the task is returned untouched)."""
        if reason not in REASONS:
            raise RegistryError(f"reason must be one of {REASONS}, got {reason!r}")
        existing = self.get(task, version)
        if existing is not None:
            return existing
        table = schema.prompt_versions
        now = utcnow()
        with self.engine.begin() as conn:
            seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.seq), 0)).where(table.c.task == task)).scalar_one() + 1
            if status == "active":
                self._retire_status(conn, task, "active", author, reason=f"superseded by {version}")
            conn.execute(
                self.store._insert(table)
                .values(
                    task=task,
                    version=version,
                    seq=seq,
                    parent_version=parent_version,
                    base_version=base_version,
                    author=author or getpass.getuser(),
                    reason=reason,
                    status=status,
                    prompt=prompt,
                    system=system,
                    parameters=json.dumps(dict(parameters), default=str),
                    motivation=json.dumps(dict(motivation or {}), default=str),
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=[table.c.task, table.c.version])
            )
            self._event(conn, task, version, "register", author, reason=reason, status=status, parent=parent_version)
        registered = self.get(task, version)
        assert registered is not None
        return registered

    def _retire_status(self, conn: sa.Connection, task: str, status: str, actor: str | None, reason: str) -> None:
        table = schema.prompt_versions
        current = conn.execute(
            sa.select(table.c.version).where(table.c.task == task, table.c.status == status)
        ).scalars().all()
        for version in current:
            conn.execute(
                table.update()
                .where(table.c.task == task, table.c.version == version)
                .values(status="retired", updated_at=utcnow())
            )
            self._event(conn, task, version, "retire", actor, reason=reason)

    def _set_status(self, task: str, version: str, status: str, action: str, actor: str | None, **details: Any) -> PromptVersion:
        if self.get(task, version) is None:
            raise RegistryError(f"task {task!r} has no prompt version {version!r}")
        table = schema.prompt_versions
        with self.engine.begin() as conn:
            if status == "active":
                self._retire_status(conn, task, "active", actor, reason=f"{action}: {version}")
            conn.execute(
                table.update().where(table.c.task == task, table.c.version == version).values(status=status, updated_at=utcnow())
            )
            self._event(conn, task, version, action, actor, **details)
        result = self.get(task, version)
        assert result is not None
        return result

    def promote(self, task: str, version: str, *, actor: str | None = None, **details: Any) -> PromptVersion:
        """Make a version the active one (the previous active is retired)."""
        return self._set_status(task, version, "active", "promote", actor, **details)

    def reject(self, task: str, version: str, *, actor: str | None = None, **details: Any) -> PromptVersion:
        return self._set_status(task, version, "retired", "reject", actor, **details)

    def rollback(self, task: str, *, actor: str | None = None) -> PromptVersion:
        """Re-activate the version that was active before the current one, in one step."""
        active = self.active(task)
        if active is None:
            raise RegistryError(f"task {task!r} has no active prompt version to roll back from")
        previous = self._previous_active(task, active.version)
        if previous is None:
            raise RegistryError(f"task {task!r}: version {active.version} has no earlier active version")
        return self._set_status(task, previous, "active", "rollback", actor, rolled_back=active.version)

    def _previous_active(self, task: str, current: str) -> str | None:
        """The version made active most recently before `current` became active."""
        activations = [e.version for e in self.events(task) if e.action in ("promote", "rollback", "activate") or (e.action == "register" and e.details.get("status") == "active")]
        for version in reversed(activations):
            if version != current:
                return version
        return None

    # -- the catalog ----------------------------------------------------------------------------

    def sync_catalog(self, catalog: Catalog, *, actor: str = "catalog") -> list[str]:
        """Register each task's catalog prompt; make it active when the catalog changed.

        Returns the tasks whose active version changed.
        """
        changed = []
        active = self.with_status("active", catalog.tasks)
        for name, task in catalog.tasks.items():
            version = catalog.base_versions[name]
            current = active.get(name)
            if current is not None and current.base_version == version:
                continue  # the catalog still says what the active version descends from
            if self.get(name, version) is None:
                self.register(
                    name,
                    version=version,
                    prompt=task.prompt,
                    system=task.system,
                    parameters=catalog_parameters(task),
                    reason="catalog",
                    base_version=version,
                    parent_version=current.version if current else None,
                    status="active",
                    author=actor,
                )
            else:
                self._set_status(name, version, "active", "activate", actor, reason="catalog changed")
            changed.append(name)
        return changed

    # -- evaluations ----------------------------------------------------------------------------

    def record_evaluations(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(schema.evaluations.insert(), [{"created_at": now, **row} for row in rows])

    def record_batch_evaluations(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Per batch run and prompt version: items checked, items that passed every check,
        failures per check and a few failing samples (see `batch.evaluation.history_rows`)."""
        if not rows:
            return
        now = utcnow()
        values = [
            {
                **row,
                "failed_checks": json.dumps(dict(row["failed_checks"]), default=str),
                "samples": json.dumps(list(row["samples"]), default=str),
                "created_at": now,
            }
            for row in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(schema.batch_evaluations.insert(), values)

    def executions_by_version(self, task: str, limit: int) -> dict[str, list[dict[str, Any]]]:
        """The latest `limit` evaluated executions of a task, per prompt version and newest
        first: for each, whether every check passed, which failed, and whether it was a canary.

        A batch run's items come as one entry per run and version that stands for `items`
        executions, `passed_items` of which passed (and `failed` counts items per check, with
        `samples` of failing items): weigh entries with `prompts.tuning.pass_rate`."""
        table = schema.evaluations
        with self.engine.connect() as conn:
            keys = conn.execute(
                sa.select(table.c.idempotency_key, sa.func.max(table.c.id).label("last"))
                .where(table.c.task == task)
                .group_by(table.c.idempotency_key, table.c.version)
                .order_by(sa.desc("last"))
                .limit(limit)
            ).all()
            rows = (
                conn.execute(
                    sa.select(table).where(table.c.task == task, table.c.idempotency_key.in_([k[0] for k in keys])).order_by(table.c.id)
                ).mappings().all()
                if keys
                else []
            )
            batch = schema.batch_evaluations
            aggregates = conn.execute(
                sa.select(batch).where(batch.c.task == task).order_by(sa.desc(batch.c.id)).limit(limit)
            ).mappings().all()
        grouped: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            entry = grouped.setdefault(
                (row["version"], row["idempotency_key"]),
                {"key": row["idempotency_key"], "run_id": row["run_id"], "canary": row["canary"], "failed": {}, "passed": True},
            )
            if not row["passed"]:
                entry["passed"] = False
                entry["failed"][row["check_name"]] = row["details"]
        result: dict[str, list[dict[str, Any]]] = {}
        for (version, _key), entry in reversed(grouped.items()):
            result.setdefault(version, []).append(entry)
        for row in aggregates:
            result.setdefault(row["version"], []).append(
                {
                    "key": f"batch:{row['run_id']}:{row['version']}",
                    "run_id": row["run_id"],
                    "canary": row["canary"],
                    "failed": {check: count for check, count in json.loads(row["failed_checks"]).items() if count},
                    "passed": row["passed"] == row["checked"],
                    "items": row["checked"],
                    "passed_items": row["passed"],
                    "samples": json.loads(row["samples"]),
                }
            )
        return result


def catalog_parameters(task: Any) -> dict[str, Any]:
    return {"timeout": task.timeout, "retries": task.retries.model_dump()}
