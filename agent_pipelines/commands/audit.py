"""`agent-pipelines audit`: read the audit log and check that nobody rewrote it."""

from __future__ import annotations

import json
import sys

import click

from agent_pipelines.commands.common import opened_store, parse_moment


@click.group("audit")
def audit_group() -> None:
    """The audit log: every mutation and every denied attempt (who, what, when, from where)."""


@audit_group.command("list")
@click.option("--actor", default=None, help="Only this user (or token, or system:<part>).")
@click.option("--action", default=None, help="Action or its prefix: task.pause, prompt., ui.")
@click.option("--target", default=None, help="Task, run or file, or its prefix.")
@click.option("--outcome", type=click.Choice(["allowed", "denied", "failed"]), default=None)
@click.option("--since", default=None, help="2h, 7d, or an ISO time.")
@click.option("--until", default=None, help="2h, 7d, or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--before", "before_seq", default=None, type=int, help="Cursor: entries older than this number (printed after each page).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_list(
    actor: str | None,
    action: str | None,
    target: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    before_seq: int | None,
    as_json: bool,
) -> None:
    """Entries, newest first."""
    with opened_store() as store:
        entries = store.audit_entries(
            actor=actor, action=action, target=target, outcome=outcome,
            since=parse_moment(since), until=parse_moment(until), before_seq=before_seq, limit=limit,
        )
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.as_json(), sort_keys=True))
        return
    if not entries:
        click.echo("no audit entries match", err=True)
        return
    rows = [("#", "when (UTC)", "actor", "via", "from", "action", "target", "outcome")]
    rows += [
        (str(e.seq), e.at.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.via, e.origin, e.action, e.target, e.outcome)
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    if len(entries) == limit:
        click.echo(f"more: --before {entries[-1].seq}", err=True)


@audit_group.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 at the first entry that was edited, removed or reordered.

    Keep the printed head hash somewhere else (a ticket, a log system): a chain rewritten from
    the start would no longer end in it.
    """
    with opened_store() as store:
        check = store.verify_audit()
    if check.intact:
        click.echo(f"audit log intact: {check.entries} entries, head {check.head_hash}")
        return
    click.echo(
        f"audit log BROKEN at entry {check.broken_at}: {check.problem} "
        f"({check.entries} entries verified before it, last good hash {check.head_hash})",
        err=True,
    )
    sys.exit(1)
