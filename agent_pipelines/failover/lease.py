"""The lease on a role (e.g. "the active dagster-daemon"): a PostgreSQL session advisory lock
held on a connection of its own, with each term recorded in `agent_pipelines_leadership`.

Why a session advisory lock: PostgreSQL releases it the moment the holding session ends, so a
killed holder frees it as soon as its socket closes, with no TTL to wait out; and it lives in the
instance's own database, so whoever holds it can reach the storage the daemon needs.

Fencing: a holder cut off from the database cannot tell whether the server still counts its
session. It treats the lease as lost once no check has succeeded for `fence_after_s` and stops
what it runs. The server ends a silent session only after its TCP user timeout and keepalives,
set per session to `server_gives_up_s` (longer than `fence_after_s` plus one check), and only
then can a standby take the lock: the old holder has stopped before a new one starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from agent_pipelines.store import schema
from agent_pipelines.store.base import sqlalchemy_url


@dataclass(frozen=True)
class LeaseTiming:
    retry_every_s: float = 1.0  # a standby asks for the lock this often
    check_every_s: float = 1.0  # the holder proves its session alive this often
    fence_after_s: float = 3.0  # the holder gives up when no check succeeded for this long
    server_gives_up_s: float = 6.0  # the server ends a silent session after about this long
    connect_timeout_s: int = 3

    def __post_init__(self) -> None:
        if self.fence_after_s + self.check_every_s >= self.server_gives_up_s:
            raise ValueError(
                "lease timing: fence_after_s + check_every_s must stay below server_gives_up_s, "
                "or a cut-off holder could still be running when a standby takes over"
            )


def lock_key(role: str) -> int:
    """A stable signed 64-bit advisory lock key for `role`."""
    return int.from_bytes(hashlib.sha256(f"agent_pipelines:{role}".encode()).digest()[:8], "big", signed=True)


def holder_name(name: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (f" ({name})" if name else "")


class PostgresLease:
    """Not thread-safe, except `abandon` and `valid`, which another thread may call."""

    def __init__(
        self,
        url: str,
        role: str,
        holder: str,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("postgresql", "postgres:")):
            raise ValueError(f"a lease needs PostgreSQL, not {url.split(':', 1)[0]}")
        self.role = role
        self.holder = holder
        self.timing = timing
        self.clock = clock
        self.key = lock_key(role)
        self.term: int | None = None
        self._last_ok = float("-inf")
        self._connection: sa.Connection | None = None
        self._guard = threading.Lock()
        server_ms = int(timing.server_gives_up_s * 1000)
        options = (
            f"-c tcp_user_timeout={server_ms} -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 "
            f"-c tcp_keepalives_count={max(1, int(timing.server_gives_up_s) - 2)} "
            f"-c statement_timeout={int(timing.fence_after_s * 1000)} -c application_name=agent-pipelines-lease"
        )
        self._engine = sa.create_engine(
            sqlalchemy_url(url),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": timing.connect_timeout_s,
                "keepalives": 1,
                "keepalives_idle": 2,
                "keepalives_interval": 1,
                "keepalives_count": 2,
                "tcp_user_timeout": server_ms,
                "options": options,
            },
        )

    def valid(self) -> int | None:
        """The term while the lease is held and was proven within `fence_after_s`, else None."""
        term = self.term
        if term is not None and self.clock() - self._last_ok < self.timing.fence_after_s:
            return term
        return None

    def try_acquire(self) -> int | None:
        """Take the lock if it is free; record and return the new term."""
        connection = self._connect()
        if not connection.execute(sa.select(sa.func.pg_try_advisory_lock(self.key))).scalar():
            return None
        table = schema.leadership
        term = connection.execute(
            table.insert()
            .values(role=self.role, holder=self.holder, acquired_at=dt.datetime.now(dt.timezone.utc))
            .returning(table.c.term)
        ).scalar_one()
        self._last_ok = self.clock()
        self.term = term
        return term

    def check(self) -> None:
        """Prove the session (and so the lock) alive; raises when it is not."""
        started = self.clock()
        assert self._connection is not None and self.term is not None
        self._connection.execute(sa.text("SELECT 1"))
        self._last_ok = started

    def release(self, reason: str) -> None:
        """Record why the term ended and unlock; best effort (a dead session has released it)."""
        term, connection = self.term, self._connection
        self.term = None
        if term is not None and connection is not None:
            with contextlib.suppress(Exception):
                table = schema.leadership
                connection.execute(
                    table.update()
                    .where(table.c.term == term)
                    .values(released_at=dt.datetime.now(dt.timezone.utc), reason=reason)
                )
                connection.execute(sa.select(sa.func.pg_advisory_unlock(self.key)))
        self._disconnect()

    def lost(self) -> None:
        """The session failed: forget the term and the connection (the server ends the session)."""
        self.term = None
        self._disconnect()

    def abandon(self) -> None:
        """From another thread: cut the socket, so a check stuck on a silent network returns."""
        self.term = None
        with self._guard:
            connection = self._connection
        if connection is None:
            return
        with contextlib.suppress(Exception):
            descriptor = connection.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
            with socket.socket(fileno=os.dup(descriptor)) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._disconnect()
        self._engine.dispose()

    def _connect(self) -> sa.Connection:
        with self._guard:
            if self._connection is None:
                self._connection = self._engine.connect()
            return self._connection

    def _disconnect(self) -> None:
        with self._guard:
            connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
                connection.close()
