"""`agent-pipelines executions`: find execution records, show one in full, apply retention."""

from __future__ import annotations


import datetime as dt
import json
import math
from pathlib import Path

import click

from agent_pipelines.catalog.loader import default_catalog_path, load_catalog
from agent_pipelines.commands.common import access_checked, opened_store


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group("executions")
def executions_group() -> None:
    """Execution records: list and search them, show one in full, prune old ones."""


@executions_group.command("show")
@click.argument("key")
def executions_show(key: str) -> None:
    """An execution's record with its full prompt and output (KEY: its idempotency key)."""
    from agent_pipelines.history import execution_text

    with opened_store() as store:
        execution = store.get_execution(key)
        if execution is None:
            raise click.ClickException(f"no execution {key!r} (keys are listed by `agent-pipelines executions list`)")
        click.echo(execution_text(execution, store.results([key]).get(key)))


@executions_group.command("list")
@click.option("--task", "tasks", multiple=True, help="Task name or glob (`daily_*`); repeat or comma-separate.")
@click.option("--owner", "owners", multiple=True, help="Owner from the catalog (`ops` = team:ops, or an email): its tasks.")
@click.option("--agent", "agents", multiple=True)
@click.option("--status", "statuses", multiple=True, help="e.g. failed,unknown")
@click.option("--trigger", "triggers", multiple=True, help="schedule, event, upstream, manual")
@click.option("--prompt-version", "prompt_versions", multiple=True)
@click.option("--since", default=None, help="Created at or after: 2h, 30m, 7d back, or an ISO date/time (UTC).")
@click.option("--until", default=None, help="Created before (same forms as --since).")
@click.option("--text", default=None, help="Case-insensitive text in the output or the error.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", default=None, help="The next cursor a previous page printed.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--archived", is_flag=True, help="Search the retention archive instead.")
@click.option("--catalog", "catalog_path", type=click.Path(path_type=Path), default=None, help="For --owner (default: $AGENT_PIPELINES_CATALOG).")
def executions_list(
    tasks: tuple[str, ...],
    owners: tuple[str, ...],
    agents: tuple[str, ...],
    statuses: tuple[str, ...],
    triggers: tuple[str, ...],
    prompt_versions: tuple[str, ...],
    since: str | None,
    until: str | None,
    text: str | None,
    limit: int,
    cursor: str | None,
    fmt: str,
    archived: bool,
    catalog_path: Path | None,
) -> None:
    """Executions newest first, a page at a time: the last line gives the cursor of the next page.

    \b
    agent-pipelines executions list --task 'daily_*' --status failed --since 2h --text timeout
    agent-pipelines executions list --owner ops --format json --cursor <next cursor>
    """
    from agent_pipelines.records.filters import build_filter
    from agent_pipelines.records.render import page_dict, table_rows
    from agent_pipelines.store.records import BadCursor

    catalog = load_catalog(catalog_path or default_catalog_path()) if owners else None
    try:
        wanted = build_filter(
            now=dt.datetime.now(dt.timezone.utc), catalog=catalog, tasks=tasks, owners=owners, agents=agents,
            statuses=statuses, triggers=triggers, prompt_versions=prompt_versions, since=since, until=until, text=text,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with opened_store() as store:
        try:
            page = store.search_executions(wanted, limit=limit, cursor=cursor, archived=archived)
        except BadCursor as exc:
            raise click.BadParameter(str(exc), param_hint="--cursor") from exc
        if store.engine.dialect.name == "postgresql":
            from agent_pipelines.records.indexes import missing_indexes

            if missing := missing_indexes(store.engine):
                click.echo(
                    f"note: {len(missing)} execution-record index(es) missing, searches scan: "
                    "run `agent-pipelines executions build-indexes`",
                    err=True,
                )
    if fmt == "json":
        click.echo(json.dumps(page_dict(page), indent=1))
        return
    if page.rows:
        _print_table(table_rows(page))
    else:
        click.echo("no executions match")
    click.echo(f"next cursor: {page.next_cursor}" if page.next_cursor else "(last page)")


@executions_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Only count what would be moved.")
@click.option("--keep-days", type=click.FloatRange(min=1), default=None, help="Override the catalog's retention.keep_days.")
@click.option("--archive/--delete", "archive", default=None, help="Override the catalog's retention.archive.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=None)
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Stop after this many (default: until done).")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def executions_prune(dry_run: bool, keep_days: float | None, archive: bool | None, batch_size: int | None, max_batches: int | None, path: Path | None) -> None:
    """Apply the catalog's `retention:` now (what `retention_sensor` does every few minutes):
    archive or delete terminal executions older than keep_days, in short batches."""
    from agent_pipelines.catalog.retention import RetentionSpec
    from agent_pipelines.records.retention import apply_retention, cutoff_for, retention_preview

    catalog = load_catalog(path or default_catalog_path())
    declared = catalog.retention
    if declared is None and keep_days is None:
        raise click.UsageError("the catalog declares no `retention:`; pass --keep-days")
    overrides = {k: v for k, v in {"keep_days": keep_days, "archive": archive, "batch_size": batch_size}.items() if v is not None}
    policy = (declared or RetentionSpec(keep_days=keep_days)).model_copy(update=overrides)
    now = dt.datetime.now(dt.timezone.utc)
    with opened_store() as store:
        if dry_run:
            count = retention_preview(store, policy, now)
            verb = "archive" if policy.archive else "delete"
            click.echo(f"would {verb} {count} execution(s) created before {cutoff_for(policy, now).isoformat(timespec='seconds')}")
            return
        # Records of every task go: admin only (an action the policy does not map), and audited.
        with access_checked(store, catalog, "executions.prune", sorted(catalog.tasks), keep_days=policy.keep_days, archive=policy.archive):
            report = apply_retention(store, policy, now, budget_s=math.inf, max_batches=max_batches)
    click.echo(report.describe())


@executions_group.command("build-indexes")
def executions_build_indexes() -> None:
    """Build the execution-record indexes the migration left out on a large PostgreSQL table,
    with CREATE INDEX CONCURRENTLY: the scheduler keeps writing meanwhile."""
    from agent_pipelines.records.indexes import build_online, missing_indexes

    with opened_store() as store:
        built = build_online(store.engine, report=click.echo)
        left = missing_indexes(store.engine)
    click.echo(f"built {len(built)} index(es)" + (f"; not built: {', '.join(i.name for i in left)}" if left else ""))
