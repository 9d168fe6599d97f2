"""Tables agent_pipelines keeps beside Dagster's own storage.

They live in the same PostgreSQL database as Dagster when one is configured (so one backup
covers both), else in `agent_pipelines.db` under DAGSTER_HOME. Every name carries the
`agent_pipelines_` prefix so it never collides with Dagster's tables, and the migrations keep
their own version table because Dagster's alembic uses the default `alembic_version`.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "agent_pipelines_alembic_version"

metadata = sa.MetaData()

executions = sa.Table(
    "agent_pipelines_executions",
    metadata,
    # One row per execution of a task: every attempt of it shares the idempotency key.
    sa.Column("idempotency_key", sa.String(255), primary_key=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),  # the run carrying it now ('' = none)
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("due_time", sa.DateTime(timezone=True)),
    sa.Column("prompt_version", sa.String(64)),
    # See agent_pipelines.scheduling.status: claimed -> sending -> succeeded | failed | unknown,
    # with retrying between attempts; not_sent, missed, skipped and catchup never sent anything.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16)),  # ok | failed | unknown (the agent may have acted)
    sa.Column("failure_kind", sa.String(32)),  # agent_pipelines.agents.base.FailureKind
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # attempts that may have left
    sa.Column("error", sa.Text),
    sa.Column("reason", sa.Text),  # why it has this status, in words (missed: when the platform was down, ...)
    sa.Column("latency_ms", sa.Float),
    sa.Column("cost", sa.Float),  # token cost from the agent's `pricing` (catalog), when known
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # when the request left for the agent, and how long after its due time
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("lateness_ms", sa.Float),
    sa.Column("answered_at", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),  # status retrying: when to try again
    sa.Column("deadline", sa.DateTime(timezone=True)),  # no attempt starts after this
    sa.Column("published_at", sa.DateTime(timezone=True)),  # reported to Dagster
    sa.Column("upstream", sa.Text),  # JSON {task: idempotency key} of the upstream outputs it read
    sa.Index("ix_agent_pipelines_executions_task_created", "task", "created_at"),
    sa.Index("ix_agent_pipelines_executions_run", "run_id"),
    sa.Index("ix_agent_pipelines_executions_task_due", "task", "due_time"),
    sa.Index("ix_agent_pipelines_executions_agent_updated", "agent", "updated_at"),
    sa.Index("ix_agent_pipelines_executions_status", "status"),
    # Execution records (migration 0011): keyset pages in (created_at, idempotency_key) order,
    # with or without a filter; PostgreSQL also gets a trigram index on `error` (see 0011).
    sa.Index("ix_agent_pipelines_executions_created_key", "created_at", "idempotency_key"),
    sa.Index("ix_agent_pipelines_executions_status_created", "status", "created_at"),
    sa.Index("ix_agent_pipelines_executions_agent_created", "agent", "created_at"),
    sa.Index("ix_agent_pipelines_executions_trigger_created", "trigger", "created_at"),
    sa.Index("ix_agent_pipelines_executions_version_created", "prompt_version", "created_at"),
)

results = sa.Table(
    "agent_pipelines_results",
    metadata,
    # What an execution sent and got back, in full (Dagster metadata keeps a preview).
    sa.Column("idempotency_key", sa.String(255), primary_key=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("prompt", sa.Text),
    sa.Column("system", sa.Text),
    sa.Column("output", sa.Text),
    sa.Column("model", sa.String(255)),
    sa.Column("session_id", sa.String(255)),
    sa.Column("tokens_in", sa.Integer),
    sa.Column("tokens_out", sa.Integer),
    sa.Column("details", sa.Text),  # JSON: the agent's response metadata
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The execution's created_at (its sort key in execution records, migration 0011), copied when
    # the result is written: text search sorts the outputs that match without looking up each one's
    # execution. An execution's created_at never changes.
    sa.Column("execution_created_at", sa.DateTime(timezone=True)),
    sa.Index("ix_agent_pipelines_results_task_created", "task", "created_at"),
    # PostgreSQL only (migration 0011): a pg_trgm GIN index on `output` for `executions list --text`.
)

# Retention's archive (migration 0011): executions and results moved out of the hot tables, with
# the same columns plus when they were moved.
executions_archive = sa.Table(
    "agent_pipelines_executions_archive",
    metadata,
    *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in executions.columns),
    sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_executions_archive_created_key", "created_at", "idempotency_key"),
    sa.Index("ix_agent_pipelines_executions_archive_task_created", "task", "created_at"),
)

results_archive = sa.Table(
    "agent_pipelines_results_archive",
    metadata,
    *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in results.columns),
    sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
)

session_leases = sa.Table(
    "agent_pipelines_session_leases",
    metadata,
    # One turn at a time per `session: task` conversation, across processes.
    sa.Column("session_key", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),  # the execution taking its turn
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
)

agent_health = sa.Table(
    "agent_pipelines_agent_health",
    metadata,
    # Agents that keep refusing connections or credentials are left alone and probed instead.
    sa.Column("agent", sa.String(128), primary_key=True),
    sa.Column("healthy", sa.Boolean, nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("unhealthy_since", sa.DateTime(timezone=True)),
    sa.Column("next_probe_at", sa.DateTime(timezone=True)),
    sa.Column("probe_interval_s", sa.Float),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

agent_load = sa.Table(
    "agent_pipelines_agent_load",
    metadata,
    # What each run (holder) sees of each agent's load, written every second while it runs
    # (agent_pipelines.scheduling.load): fresh rows add up to the agent's requests in flight and
    # waiting; the newest row's limiter state is where the next run starts.
    sa.Column("agent", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(64), primary_key=True),  # the run id
    sa.Column("limit", sa.Integer, nullable=False),  # the learned limit
    sa.Column("max_limit", sa.Integer, nullable=False),  # the agent's max_concurrency
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("queued", sa.Integer, nullable=False),  # waiting in this run's queue for a permit
    sa.Column("oldest_wait_s", sa.Float),  # how long the oldest of them has waited
    sa.Column("latency_ms", sa.Float),  # recent answers' latency
    sa.Column("baseline_ms", sa.Float),  # latency without a queue (measured one request at a time)
    sa.Column("sent", sa.Integer, nullable=False),  # counts since the holder started
    sa.Column("overloads", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),  # waited past their deadline
    sa.Column("last_skip_at", sa.DateTime(timezone=True)),
    sa.Column("state", sa.Text, nullable=False),  # JSON: the limiter's state
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_agent_load_updated", "agent", "updated_at"),
)

task_registry = sa.Table(
    "agent_pipelines_task_registry",
    metadata,
    # When the platform first knew each task: due times before that are never "missed".
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
)

run_heartbeats = sa.Table(
    "agent_pipelines_run_heartbeats",
    metadata,
    # Refreshed every few seconds by each live run that executes tasks (agent_pipelines.scheduling.heartbeat).
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    # host:pid:start of the process that beats: on that host, a gone process means a dead run now
    sa.Column("worker", sa.String(255)),
)

leadership = sa.Table(
    "agent_pipelines_leadership",
    metadata,
    # One row per term of a leader (agent_pipelines.failover): the active dagster-daemon's wrapper
    # writes it on the connection that holds the lease, so a term exists only while it was held.
    sa.Column("term", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(255), nullable=False),  # host, pid and name of the wrapper
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("released_at", sa.DateTime(timezone=True)),  # NULL: held, or its holder died
    sa.Column("reason", sa.Text),  # why it was released
    sa.Index("ix_agent_pipelines_leadership_role_term", "role", "term"),
)

agent_lifecycle = sa.Table(
    "agent_pipelines_agent_lifecycle",
    metadata,
    # One row per agent with a `lifecycle:` (agent_pipelines.lifecycle): asleep -> waking ->
    # ready -> asleep, or failed when a wake did not work.
    sa.Column("agent", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("woke_at", sa.DateTime(timezone=True)),  # the current (or last) wake
    sa.Column("process", sa.String(255)),  # command backend: host:pid:start of the agent's process
    sa.Column("detail", sa.Text),  # why it is in this state
)

lifecycle_events = sa.Table(
    "agent_pipelines_lifecycle_events",
    metadata,
    # wake, ready, sleep, wake_failed, cold (a task found its agent asleep), exited: the history
    # behind agent-hours and the UI's wake/sleep plots.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Index("ix_agent_pipelines_lifecycle_events_agent_at", "agent", "at"),
)

task_sessions = sa.Table(
    "agent_pipelines_task_sessions",
    metadata,
    # The id an agent handed back for a `session: task` conversation (Hermes, Dify).
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("remote_id", sa.String(255), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

session_messages = sa.Table(
    "agent_pipelines_session_messages",
    metadata,
    # History replayed to stateless endpoints for `session: task`.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_session_messages_task_id", "task", "id"),
)

events = sa.Table(
    "agent_pipelines_events",
    metadata,
    # Accepted by the ingress, stored before it answers 2xx; `seq` orders them for sensors.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(255), nullable=False, unique=True),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_events_received", "received_at"),
)

task_states = sa.Table(
    "agent_pipelines_task_states",
    metadata,
    # Paused tasks are not triggered; the catalog's `enabled` stays the declared default.
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("changed_by", sa.String(255)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

run_requests = sa.Table(
    "agent_pipelines_run_requests",
    metadata,
    # "Run now" from the CLI or the control job, launched by the scheduler sensor.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("requested_by", sa.String(255)),
    sa.Column("variables", sa.Text),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("launched_at", sa.DateTime(timezone=True)),
)

prompt_versions = sa.Table(
    "agent_pipelines_prompt_versions",
    metadata,
    # Every prompt a task has used. `base_version` is the catalog version it descends from: a
    # tuned version only applies while the catalog still says what it was tuned from.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("parent_version", sa.String(64)),
    sa.Column("base_version", sa.String(64), nullable=False),
    sa.Column("author", sa.String(255)),
    sa.Column("reason", sa.String(16), nullable=False),  # catalog | tuner | manual | rollback
    sa.Column("status", sa.String(16), nullable=False),  # active | candidate | retired
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("system", sa.Text),
    sa.Column("parameters", sa.Text, nullable=False),  # JSON: timeout, retries
    sa.Column("motivation", sa.Text, nullable=False),  # JSON: rationale, failing executions, runs
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("task", "version", name="uq_agent_pipelines_prompt_versions_task_version"),
    sa.Index("ix_agent_pipelines_prompt_versions_task_status", "task", "status"),
)

prompt_events = sa.Table(
    "agent_pipelines_prompt_events",
    metadata,
    # The audit trail: register, promote, retire, rollback, approve, reject.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_prompt_events_task", "task", "id"),
)

evaluations = sa.Table(
    "agent_pipelines_evaluations",
    metadata,
    # One row per check per execution, with the prompt version it judged.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("check_name", sa.String(64), nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("details", sa.Text),
    sa.Column("canary", sa.Boolean, nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("tokens", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_evaluations_task_version", "task", "version"),
    sa.Index("ix_agent_pipelines_evaluations_task_created", "task", "created_at"),
)

batch_evaluations = sa.Table(
    "agent_pipelines_batch_evaluations",
    metadata,
    # One row per batch run and prompt version: its items' checks in aggregate, so a batch of a
    # million items adds a row per version to the history the tuner reads, not a million.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("canary", sa.Boolean, nullable=False),
    sa.Column("checked", sa.Integer, nullable=False),  # answered items whose checks ran
    sa.Column("passed", sa.Integer, nullable=False),  # of those, items that passed every check
    sa.Column("failed_checks", sa.Text, nullable=False),  # JSON: check name -> items that failed it
    sa.Column("samples", sa.Text, nullable=False),  # JSON: a few failing items (key, checks, output)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_pipelines_batch_evaluations_task", "task", "id"),
)

audit_log = sa.Table(
    "agent_pipelines_audit",
    metadata,
    # Append-only (database triggers refuse UPDATE and DELETE) and hash-chained: each entry's hash
    # covers the previous entry's hash, so an edited, removed or reordered entry breaks the chain.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),  # who: user name, token name, `system`
    sa.Column("via", sa.String(32), nullable=False),  # cli | ui | graphql | ingress | sensor | api
    sa.Column("origin", sa.String(255), nullable=False),  # from where: client address or host/pid
    sa.Column("action", sa.String(64), nullable=False),  # e.g. task.pause, prompt.promote, ui.launch
    sa.Column("target", sa.String(512), nullable=False),  # task, run, file or policy it touched
    sa.Column("outcome", sa.String(16), nullable=False),  # allowed | denied | failed
    sa.Column("details", sa.Text, nullable=False),  # JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_agent_pipelines_audit_at", "at"),
    sa.Index("ix_agent_pipelines_audit_target", "target", "seq"),
    sa.Index("ix_agent_pipelines_audit_actor", "actor", "seq"),
)

catalog_items = sa.Table(
    "agent_pipelines_catalog_items",
    metadata,
    # The digest of every agent, task and budget as last loaded, so a catalog change is audited
    # as what it changed (added, removed, changed items), not only that something did.
    sa.Column("item", sa.String(160), primary_key=True),  # task:<name>, agent:<name>, budget:<name>
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("source", sa.String(512)),  # file:line it was declared at
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

notification_outbox = sa.Table(
    "agent_pipelines_notification_outbox",
    metadata,
    # One message per channel, subject (task:/agent:/budget:) and family of events per rate window
    # (agent_pipelines.notifications): repeats inside the window are folded into it (`suppressed`),
    # delivery is retried with back-off until `sent` or `gave_up`.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(512), nullable=False, unique=True),  # channel|subject|family|window start
    sa.Column("channel", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("family", sa.String(32), nullable=False),  # state | late | check | health | budget
    sa.Column("kind", sa.String(32), nullable=False),  # the event this message reports
    sa.Column("latest_kind", sa.String(32), nullable=False),  # the latest event folded into its window
    sa.Column("task", sa.String(128)),
    sa.Column("agent", sa.String(128)),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("latest_event", sa.Text, nullable=False),  # JSON of the latest event (for the follow-up)
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_s", sa.Float, nullable=False),
    sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("suppressed", sa.Integer, nullable=False, server_default="0"),  # repeats folded in
    sa.Column("reported", sa.Integer, nullable=False, server_default="0"),  # of those, told in the message
    sa.Column("carried", sa.Integer, nullable=False, server_default="0"),  # untold repeats of the window before
    sa.Column("followed_up", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status", sa.String(16), nullable=False),  # pending | sent | gave_up | skipped
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),  # secrets redacted
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Index("ix_agent_pipelines_notification_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_agent_pipelines_notification_outbox_window", "channel", "subject", "family", "window_start"),
)
