"""`agent-pipelines notifications`: the outbox (what was sent, what failed and why), the channels,
and a test message to one channel."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from agent_pipelines.catalog.loader import default_catalog_path, load_catalog
from agent_pipelines.commands.common import opened_store


@click.group("notifications")
def notifications_group() -> None:
    """Notifications: the outbox, the catalog's channels, a test message."""


@notifications_group.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(["pending", "sent", "gave_up", "skipped"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def notifications_list(statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Outbox messages, newest first: status, attempts, next retry and last error (redacted)."""
    with opened_store() as store:
        messages = store.notifications(statuses or None, limit=limit)
    for m in messages:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "id": m.id, "channel": m.channel, "subject": m.subject, "kind": m.kind, "status": m.status,
                        "attempts": m.attempts, "suppressed": m.suppressed, "created_at": m.created_at.isoformat(),
                        "sent_at": m.sent_at.isoformat() if m.sent_at else None,
                        "next_attempt_at": m.next_attempt_at.isoformat() if m.next_attempt_at and m.status == "pending" else None,
                        "last_error": m.last_error, "title": m.title,
                    }
                )
            )
            continue
        retry = f" next try {m.next_attempt_at:%Y-%m-%d %H:%M:%S}" if m.status == "pending" and m.attempts and m.next_attempt_at else ""
        folded = f" (+{m.suppressed} folded)" if m.suppressed else ""
        click.echo(
            f"{m.id:>6}  {m.created_at:%Y-%m-%d %H:%M:%S}  {m.status:<8} {m.attempts} attempt(s){retry}  "
            f"{m.channel}  {m.subject} {m.kind}{folded}"
        )
        if m.last_error:
            click.echo(f"        last error: {m.last_error}")
    if not messages:
        click.echo("no notifications", err=True)


@notifications_group.command("channels")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def notifications_channels(path: Path | None) -> None:
    """The catalog's channels and whether the variables they read are set here."""
    catalog = load_catalog(path or default_catalog_path())
    for channel in catalog.notifications.channels.values():
        unset = [name for name in channel.env_vars() if not os.environ.get(name)]
        state = f"unset: ${', $'.join(unset)} (messages to it are skipped)" if unset else "ready"
        source = f"${channel.url_env}" if channel.url_env else f"{channel.scheme}://..."
        click.echo(f"{channel.name}  {source}  {state}")
    if not catalog.notifications.channels:
        click.echo("no notification channels in the catalog", err=True)


@notifications_group.command("test")
@click.argument("channel")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def notifications_test(channel: str, path: Path | None) -> None:
    """Send a test message to CHANNEL now (not through the outbox); exits 1 when it fails."""
    from agent_pipelines.notifications.channels import ChannelUnavailable, resolve
    from agent_pipelines.notifications.delivery import DeliveryFailed, send
    from agent_pipelines.notifications.render import PREFIX

    catalog = load_catalog(path or default_catalog_path())
    spec = catalog.notifications.channels.get(channel)
    if spec is None:
        known = ", ".join(catalog.notifications.channels) or "none"
        raise click.ClickException(f"no channel {channel!r} in the catalog (channels: {known})")
    try:
        resolved = resolve(spec, timeout_s=catalog.notifications.delivery.timeout)
        send(resolved, f"{PREFIX} test message", f"A test message to channel {channel!r} from agent-pipelines.")
    except (ChannelUnavailable, DeliveryFailed) as exc:
        click.echo(f"{channel}: not delivered: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{channel}: delivered")
