"""The audit log: who did what, when, from where; append-only and hash-chained.

Each entry's hash is SHA-256 (or HMAC-SHA-256 with `$AGENT_PIPELINES_AUDIT_KEY`) over the previous
entry's hash and the entry's own fields, and entries are numbered without gaps. Database triggers
refuse UPDATE and DELETE; anyone who gets past them (a superuser editing rows) breaks the chain,
which `verify_audit` finds. With the key set, rewriting the whole chain also needs the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, aware, utcnow

AUDIT_KEY_ENV = "AGENT_PIPELINES_AUDIT_KEY"
GENESIS_HASH = "0" * 64
_PG_AUDIT_LOCK = 0x61756474  # "audt"
_APPEND_TRIES = 50


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: dt.datetime
    actor: str
    via: str
    origin: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["at"] = self.at.isoformat()
        return row


@dataclass(frozen=True)
class ChainCheck:
    entries: int
    head_hash: str
    broken_at: int | None = None  # the first entry whose hash or number does not follow
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def _canonical(seq: int, at: dt.datetime, actor: str, via: str, origin: str, action: str, target: str, outcome: str, details: str) -> bytes:
    at_text = aware(at).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[union-attr]
    return json.dumps([seq, at_text, actor, via, origin, action, target, outcome, details], separators=(",", ":")).encode()


def chain_hash(prev_hash: str, payload: bytes) -> str:
    key = os.environ.get(AUDIT_KEY_ENV)
    message = prev_hash.encode() + b"\n" + payload
    if key:
        return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


class AuditRecords(StoreBase):
    def append_audit(
        self,
        *,
        actor: str,
        via: str,
        origin: str,
        action: str,
        target: str,
        outcome: str = "allowed",
        details: dict[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> AuditEntry:
        """Append one entry at the end of the chain (serialized across processes)."""
        details_text = json.dumps(details or {}, sort_keys=True, default=str)
        at = at or utcnow()
        table = schema.audit_log
        for attempt in range(_APPEND_TRIES):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK})
                    last = conn.execute(sa.select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)).first()
                    seq = (last.seq + 1) if last else 1
                    prev_hash = last.hash if last else GENESIS_HASH
                    digest = chain_hash(prev_hash, _canonical(seq, at, actor, via, origin, action, target, outcome, details_text))
                    conn.execute(
                        table.insert().values(
                            seq=seq, at=at, actor=actor[:255], via=via[:32], origin=origin[:255], action=action[:64],
                            target=target[:512], outcome=outcome[:16], details=details_text, prev_hash=prev_hash, hash=digest,
                        )
                    )
                return AuditEntry(seq, at, actor, via, origin, action, target, outcome, details or {}, prev_hash, digest)
            except (sa.exc.IntegrityError, sa.exc.OperationalError):
                # SQLite: another process took the same number (or held the write lock); try again.
                if attempt == _APPEND_TRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def audit_entries(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """Entries newest first; `before_seq` is the cursor for the next page. `action` and
        `target` match a prefix (`prompt.` finds every prompt action)."""
        table = schema.audit_log
        query = sa.select(table).order_by(table.c.seq.desc()).limit(limit)
        if actor:
            query = query.where(table.c.actor == actor)
        if action:
            query = query.where(table.c.action.startswith(action, autoescape=True))
        if target:
            query = query.where(table.c.target.startswith(target, autoescape=True))
        if outcome:
            query = query.where(table.c.outcome == outcome)
        if since:
            query = query.where(table.c.at >= since)
        if until:
            query = query.where(table.c.at < until)
        if before_seq is not None:
            query = query.where(table.c.seq < before_seq)
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def verify_audit(self, batch: int = 5000) -> ChainCheck:
        """Walk the whole chain in order and recompute every hash."""
        count = 0
        prev_hash = GENESIS_HASH
        for row in self._audit_rows_in_order(batch):
            count += 1
            if row.seq != count:
                return ChainCheck(count - 1, prev_hash, row.seq, f"entry {count} is missing (next is {row.seq})")
            if row.prev_hash != prev_hash:
                return ChainCheck(count - 1, prev_hash, row.seq, "does not link to the entry before it")
            expected = chain_hash(
                prev_hash,
                _canonical(row.seq, row.at, row.actor, row.via, row.origin, row.action, row.target, row.outcome, row.details),
            )
            if not hmac.compare_digest(expected, row.hash):
                return ChainCheck(count - 1, prev_hash, row.seq, "its content does not match its hash (edited)")
            prev_hash = row.hash
        return ChainCheck(count, prev_hash)

    def _audit_rows_in_order(self, batch: int) -> Iterator[Any]:
        table = schema.audit_log
        after = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(table).where(table.c.seq > after).order_by(table.c.seq).limit(batch)).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].seq


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        row.seq, aware(row.at), row.actor, row.via, row.origin, row.action, row.target, row.outcome,  # type: ignore[arg-type]
        json.loads(row.details), row.prev_hash, row.hash,
    )
