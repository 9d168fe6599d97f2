"""Daemon failover: any number of `agent-pipelines daemon` wrappers against one PostgreSQL
instance, exactly one of them running `dagster-daemon` (see `guard` and `lease`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from agent_pipelines.failover.guard import TERM_ENV, DaemonGuard
from agent_pipelines.failover.lease import LeaseTiming, PostgresLease, holder_name, lock_key

DAEMON_ROLE = "dagster-daemon"

__all__ = ["DAEMON_ROLE", "TERM_ENV", "DaemonGuard", "LeaseTiming", "PostgresLease", "holder_name", "lock_key", "run_guarded_daemon"]


class NeedsPostgres(RuntimeError):
    pass


def instance_postgres_url(home: Path) -> str:
    """The instance's PostgreSQL URL; NeedsPostgres when it stores in SQLite."""
    import dagster as dg

    from agent_pipelines.store import StateStore
    from agent_pipelines.store.base import url_for_instance

    with dg.DagsterInstance.from_config(str(home)) as instance:
        url = url_for_instance(instance)
    if not url.startswith(("postgresql", "postgres:")):
        raise NeedsPostgres(
            f"daemon failover needs PostgreSQL: the instance in {home} stores in SQLite, whose file "
            "cannot hold a lease across processes and machines. Set AGENT_PIPELINES_POSTGRES_URL "
            "(and run `agent-pipelines instance init`), or run a single `dagster-daemon run`."
        )
    StateStore.for_url(url)  # the leadership table exists before the first term is written
    return url


def run_guarded_daemon(
    home: Path,
    daemon_command: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    name: str = "",
    say: Callable[[str], None] = print,
    log: Path | None = None,
) -> None:
    """Until SIGINT or SIGTERM: stand by for the lease, run the daemon while holding it."""
    lease = PostgresLease(instance_postgres_url(home), DAEMON_ROLE, holder_name(name))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    DaemonGuard(lease, daemon_command, env, cwd, say=say, log=log).run(stop)
