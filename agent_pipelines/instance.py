"""The Dagster instance (DAGSTER_HOME and its dagster.yaml) that `make run` uses.

SQLite under a git-ignored `.dagster_home/` by default; PostgreSQL through dagster-postgres when
$AGENT_PIPELINES_POSTGRES_URL is set. agent_pipelines' own tables follow the instance's storage
(see `agent_pipelines.store`), so nothing else needs configuring.
"""

from __future__ import annotations

import os
from pathlib import Path

POSTGRES_URL_ENV = "AGENT_PIPELINES_POSTGRES_URL"
MANAGED_MARKER = "# managed-by: agent-pipelines"

_COMMON = """\
telemetry:
  enabled: false
# No "join the community" dialog over the UI (it asks for an e-mail address on first visit).
nux:
  enabled: false
# No freshness policies are used: the freshness daemon would still evaluate every asset each
# iteration and, at 10,000 tasks, cost most of the idle daemon's CPU (benchmarks/RESULTS.md).
freshness:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator.queued_run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 25
    dequeue_interval_seconds: 1
    # Live window runs carry `dagster/priority: 10` and start first; catch-up runs carry -10
    # and at most one runs at a time, so draining a backlog never starves the live schedule.
    tag_concurrency_limits:
      - key: agent_pipelines/catchup
        value: "true"
        limit: 1
# A run whose process died before it started (killed with its machine while STARTING) is
# failed after start_timeout_seconds, so its due time goes to a rescue or a new catch-up run;
# a STARTED run that dies is caught sooner by the heartbeats (agent_pipelines/heartbeat.py).
run_monitoring:
  enabled: true
  start_timeout_seconds: 90
  poll_interval_seconds: 10
  max_resume_run_attempts: 0
"""

_POSTGRES = f"""\
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_URL_ENV}
"""


def default_home() -> Path:
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1] / ".dagster_home"


def instance_yaml(use_postgres: bool) -> str:
    storage = "PostgreSQL ($" + POSTGRES_URL_ENV + ")" if use_postgres else "SQLite in this directory"
    header = (
        f"{MANAGED_MARKER}\n"
        f"# Storage: {storage}. Delete the marker line above to keep your own edits;\n"
        "# otherwise `agent-pipelines up` rewrites this file to follow the environment.\n"
    )
    return header + _COMMON + (_POSTGRES if use_postgres else "")


def ensure_instance(home: Path | None = None, *, use_postgres: bool | None = None) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml; keep a hand-written one untouched."""
    home = (home or default_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if use_postgres is None:
        use_postgres = bool(os.environ.get(POSTGRES_URL_ENV))
    config = home / "dagster.yaml"
    if config.exists() and MANAGED_MARKER not in config.read_text():
        return home
    wanted = instance_yaml(use_postgres)
    if not config.exists() or config.read_text() != wanted:
        config.write_text(wanted)
    return home


def initialize_storage(home: Path) -> None:
    """Open the instance once, so that one process creates its databases and stamps their schema
    version. On a fresh SQLite home, a daemon and a second process (the webserver, a CLI call)
    opening it at the same moment can both stamp it, and Dagster then refuses the database for
    good ("Version table 'alembic_version' has more than one head present")."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)):
        pass


def write_workspace(home: Path, *, host: str, port: int) -> Path:
    """A workspace for the webserver and the daemon: the code location served by
    `dagster code-server start` (one long-lived server instead of one restarted every minute)."""
    path = home / "workspace.yaml"
    path.write_text(
        f"{MANAGED_MARKER}\n"
        "load_from:\n"
        f"  - grpc_server: {{host: {host}, port: {port}, location_name: agent_pipelines}}\n"
    )
    return path
