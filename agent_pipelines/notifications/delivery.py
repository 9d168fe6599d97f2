"""Deliver due outbox messages with apprise, within a time budget, recording every attempt.

Each message is tried once per tick at most; a failure is stored with its error (secrets
redacted) and retried with exponential back-off until `delivery.max_attempts`, then given up
(and recorded so). A channel that cannot work here (its variable is unset, or it left the
catalog) is skipped at once: retrying would not change that. apprise never retries on its own
(`retry=0` by default): the outbox owns retries, as Dagster owns them for agents.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent_pipelines.catalog.notifications import ChannelSpec, DeliverySpec
from agent_pipelines.notifications import render
from agent_pipelines.notifications.channels import ChannelUnavailable, ResolvedChannel, resolve
from agent_pipelines.store import StateStore
from agent_pipelines.store.notifications import GAVE_UP, PENDING, SENT, SKIPPED, OutboxMessage

logger = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """apprise could not deliver; the message is already redacted."""


def send(resolved: ResolvedChannel, title: str, body: str, notify_type: str = "info") -> None:
    """One message to one channel; raises `DeliveryFailed` with apprise's own words, redacted."""
    import apprise

    client = apprise.Apprise()
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        try:
            if not client.add(resolved.url):
                raise DeliveryFailed("apprise does not accept the channel's URL: " + resolved.redact(captured.getvalue().strip() or "invalid URL"))
            ok = client.notify(title=title, body=body, notify_type=apprise.NotifyType(notify_type))
        except DeliveryFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is a failed delivery, not a failed tick
            raise DeliveryFailed(resolved.redact(f"{type(exc).__name__}: {exc}")) from None
        if not ok:
            said = " ".join(line.strip() for line in captured.getvalue().splitlines() if line.strip())
            raise DeliveryFailed(resolved.redact(said or "apprise reported a failure"))


def retry_delay(attempts: int, policy: DeliverySpec) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling, capped."""
    return min(policy.retry_delay * 2 ** max(attempts - 1, 0), policy.max_retry_delay)


@dataclass
class DeliveryReport:
    sent: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # will be retried
    gave_up: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    deferred: int = 0  # due, but the tick's time budget ran out

    def summary(self) -> str:
        return (
            f"{len(self.sent)} sent, {len(self.failed)} to retry, {len(self.gave_up)} given up, "
            f"{len(self.skipped)} skipped, {self.deferred} deferred"
        )


def deliver_due(
    store: StateStore,
    channels: Mapping[str, ChannelSpec],
    policy: DeliverySpec,
    now: dt.datetime,
    *,
    budget_s: float = 20.0,
    monotonic: Callable[[], float] = time.monotonic,
    environ: Mapping[str, str] | None = None,
) -> DeliveryReport:
    """Try each due message once, oldest first, while `budget_s` lasts (each try is bounded by
    `policy.timeout`, so a tick ends within about `budget_s + timeout`)."""
    report = DeliveryReport()
    started = monotonic()
    due = store.due_notifications(now)
    for index, message in enumerate(due):
        if monotonic() - started >= budget_s:
            report.deferred = len(due) - index
            break
        _deliver_one(store, channels, policy, message, now, report, environ)
    return report


def _deliver_one(
    store: StateStore,
    channels: Mapping[str, ChannelSpec],
    policy: DeliverySpec,
    message: OutboxMessage,
    now: dt.datetime,
    report: DeliveryReport,
    environ: Mapping[str, str] | None,
) -> None:
    channel = channels.get(message.channel)
    try:
        if channel is None:
            raise ChannelUnavailable(f"channel {message.channel!r} is no longer in the catalog")
        resolved = resolve(channel, environ, timeout_s=policy.timeout)
    except ChannelUnavailable as exc:
        store.record_notification_attempt(message.id, status=SKIPPED, now=now, error=str(exc), attempted=False)
        report.skipped.append((message.id, str(exc)))
        return
    suppressed = message.suppressed
    note = render.repeats_note(suppressed, message.carried, message.window_s)
    body = message.body + (f"\n\n{note}" if note else "")
    try:
        send(resolved, message.title, body, render.notify_type(message.kind))
    except DeliveryFailed as exc:
        error = str(exc)[:2000]
        attempts = message.attempts + 1
        if attempts >= policy.max_attempts:
            store.record_notification_attempt(message.id, status=GAVE_UP, now=now, error=f"gave up after {attempts} attempt(s): {error}")
            report.gave_up.append((message.id, error))
            return
        retry_at = now + dt.timedelta(seconds=retry_delay(attempts, policy))
        store.record_notification_attempt(message.id, status=PENDING, now=now, error=error, next_attempt_at=retry_at)
        report.failed.append((message.id, error))
        return
    store.record_notification_attempt(message.id, status=SENT, now=now, reported=suppressed)
    report.sent.append(message.id)

