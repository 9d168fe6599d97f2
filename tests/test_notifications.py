"""Notifications end to end: executions, checks, agent health and budgets in a real store (SQLite
and PostgreSQL), detected and routed by the catalog, delivered by apprise to a real SMTP server
(aiosmtpd) and a real webhook receiver on 127.0.0.1. Time is a `ManualClock`: windows and retries
move when the test says so."""

from __future__ import annotations

import datetime as dt
import email
import json
import textwrap
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent_pipelines.catalog.loader import Catalog, load_catalog
from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.local_platform import free_port
from agent_pipelines.notifications.channels import REDACTED, resolve
from agent_pipelines.notifications.detection import DetectionCursor
from agent_pipelines.notifications.service import NotificationService
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.scheduling.clock import ManualClock
from agent_pipelines.store import StateStore, status
from agent_pipelines.store.executions import Claim, Settlement
from sensors.notifications import (
    SENSOR_NAME,
    build_notification_definitions,
    build_notification_sensor,
)
from tests.conftest import sensor_context, write_catalog

UTC = dt.UTC
HOOK_SECRET = "hook-secret-0123456789abcdef"


# -- real receivers on 127.0.0.1 ------------------------------------------------------------------


class SmtpInbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, SmtpInbox]]:
    inbox = SmtpInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


class Webhook:
    """Answers each POST with the next status of `answers` (then 200) and keeps every JSON body."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.server: RunningServer | None = None

    async def _hook(self, request: Request) -> JSONResponse:
        payload = await request.json()
        with self.lock:
            self.received.append({"path": request.url.path, **payload})
            answer = self.answers.pop(0) if self.answers else 200
        return JSONResponse({"ok": answer == 200}, status_code=answer)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._hook, methods=["POST"])])


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    with serve_in_thread(hook.app(), name="webhook") as server:
        hook.server = server
        yield hook


@pytest.fixture
def store(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    if storage == "postgres":
        return StateStore.for_url(request.getfixturevalue("postgres_url"))
    return StateStore.for_url(f"sqlite:///{tmp_path / 'state.db'}")


# -- catalog and store helpers --------------------------------------------------------------------

TASKS = """\
tasks:
  - name: digest
    owner: research
    agent: demo
    prompt: "Summarize the news"
    budget: {per_day: 0.001}
    notify:
      channels: [hook]
      events: [failure, recovery, late, check_failed, budget_exceeded]
      late_after: 2s
  - name: quiet
    owner: ops@example.com
    agent: demo
    prompt: "Nothing to say"
"""


def notifications_yaml(smtp_port: int, hook_port: int, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        notifications:
          channels:
            - name: email
              url: "mailto://127.0.0.1:{smtp_port}?from=alerts@example.com&to=research@example.com"
            - name: hook
              url: "json://127.0.0.1:{hook_port}/hook/${{HOOK_TOKEN}}"
          routes:
            - owner: research
              channels: [email]
              events: [failure, recovery, agent_unhealthy]
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


def make_catalog(tmp_path: Path, smtp_port: int, hook_port: int, extra: str = "", tasks: str = TASKS) -> Catalog:
    directory = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", tasks)
    (directory / "notifications.yaml").write_text(notifications_yaml(smtp_port, hook_port, extra))
    catalog = load_catalog(directory)
    assert catalog.problems == ()
    return catalog


_count = iter(range(1_000_000))


def finish(store: StateStore, task: str, outcome: str, *, lateness_ms: float | None = None, cost: float | None = None,
           error: str = "agent answered 503: overloaded") -> str:
    """One execution of `task` claimed, sent and settled as a run would."""
    key = f"{task}-{next(_count)}"
    run_id = f"run-{key}"
    now = dt.datetime.now(UTC)
    store.claim([Claim(key, task, "demo", run_id, "schedule", now, "v1")])
    store.start_attempts([key], run_id, now)
    failed = outcome == status.FAILED
    store.settle([
        Settlement(
            key=key, task=task, status=outcome, run_id=run_id, outcome="failed" if failed else "ok",
            failure_kind="http_5xx" if failed else None, error=error if failed else None,
            lateness_ms=lateness_ms, latency_ms=120.0, sent_at=now, answered_at=now, cost=cost,
        )
    ])
    return key


def texts(inbox: SmtpInbox) -> list[tuple[str, str]]:
    found = []
    for _sender, _to, message in inbox.messages:
        plain = next(part for part in message.walk() if part.get_content_type() == "text/plain")
        found.append((str(message["Subject"]), plain.get_payload(decode=True).decode()))
    return found


@pytest.fixture(autouse=True)
def _hook_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", HOOK_SECRET)


# -- delivery to a real SMTP server and a real webhook ---------------------------------------------


def test_failure_and_recovery_reach_email_and_webhook(tmp_path: Path, store: StateStore, smtp, webhook: Webhook) -> None:
    smtp_port, inbox = smtp
    catalog = make_catalog(tmp_path, smtp_port, webhook.server.port)
    clock = ManualClock(dt.datetime.now(UTC))
    service = NotificationService(catalog, store, clock)
    cursor = DetectionCursor()
    assert service.tick(cursor).events == []  # nothing has happened yet

    finish(store, "digest", status.FAILED)
    finish(store, "quiet", status.FAILED)  # routed nowhere: no message
    report = service.tick(cursor)
    assert [e.kind for e in report.events] == ["failure", "failure"]
    assert report.queued.queued == 2 and report.queued.unrouted == 1
    assert len(report.delivery.sent) == 2

    [(subject, text)] = texts(inbox)
    assert subject == "[agent-pipelines] task digest failed (failed)"
    assert "Task digest (owner team:research) ended failed after 1 attempt(s)" in text
    assert "Error: agent answered 503: overloaded" in text and "Failure kind: http_5xx" in text
    _sender, recipients, _message = inbox.messages[0]
    assert recipients == ["research@example.com"]
    [hook] = webhook.received
    assert hook["path"] == f"/hook/{HOOK_SECRET}"
    assert hook["title"] == subject and hook["type"] == "failure"
    assert "agent answered 503: overloaded" in hook["message"]

    clock.advance(16 * 60)  # past the 15-minute window
    finish(store, "digest", status.SUCCEEDED)
    report = service.tick(cursor)
    assert [e.kind for e in report.events] == ["recovery"]
    subject, text = texts(inbox)[1]
    assert subject == "[agent-pipelines] task digest recovered"
    assert "succeeded again after 1 failed execution(s)" in text
    assert webhook.received[1]["type"] == "success"
    assert [m.status for m in store.notifications()] == ["sent"] * 4


def test_a_flapping_task_sends_one_message_per_window_then_its_final_state(
    tmp_path: Path, store: StateStore, smtp, webhook: Webhook
) -> None:
    catalog = make_catalog(tmp_path, smtp[0], webhook.server.port)
    clock = ManualClock(dt.datetime.now(UTC))
    service = NotificationService(catalog, store, clock)
    cursor = DetectionCursor()
    service.tick(cursor)
    for outcome in (status.FAILED, status.SUCCEEDED, status.FAILED, status.SUCCEEDED, status.FAILED, status.SUCCEEDED):
        finish(store, "digest", outcome)
        service.tick(cursor)
        clock.advance(60)
    assert [m["title"] for m in webhook.received] == ["[agent-pipelines] task digest failed (failed)"]
    [message] = [m for m in store.notifications() if m.channel == "hook"]
    assert message.suppressed == 5 and message.latest_kind == "recovery"

    clock.advance(15 * 60)  # the window closes on a recovery: that is still owed
    report = service.tick(cursor)
    assert report.events == [] and report.queued.queued == 2  # hook and email
    assert [m["title"] for m in webhook.received][1] == "[agent-pipelines] task digest recovered"
    assert "5 more event(s) like this since the previous message were not sent separately" in webhook.received[1]["message"]
    clock.advance(20 * 60)
    assert service.tick(cursor).queued.queued == 0  # told once
    assert len(webhook.received) == 2


def test_a_failed_delivery_is_recorded_and_retried_with_backoff(tmp_path: Path, store: StateStore, smtp, webhook: Webhook) -> None:
    catalog = make_catalog(tmp_path, smtp[0], webhook.server.port)
    webhook.answers = [500]
    clock = ManualClock(dt.datetime.now(UTC))
    service = NotificationService(catalog, store, clock)
    cursor = DetectionCursor()
    service.tick(cursor)
    finish(store, "digest", status.FAILED)
    report = service.tick(cursor)
    assert len(report.delivery.failed) == 1
    [message] = [m for m in store.notifications() if m.channel == "hook"]
    assert message.status == "pending" and message.attempts == 1
    assert "error=500" in message.last_error and HOOK_SECRET not in message.last_error
    assert message.next_attempt_at == clock.now() + dt.timedelta(seconds=30)

    clock.advance(29)
    assert service.tick(cursor).delivery.sent == []  # not due yet: no request
    assert len(webhook.received) == 1
    clock.advance(2)
    assert service.tick(cursor).delivery.sent == [message.id]
    [message] = [m for m in store.notifications() if m.channel == "hook"]
    assert message.status == "sent" and message.attempts == 2
    assert [m["title"] for m in webhook.received] == ["[agent-pipelines] task digest failed (failed)"] * 2


def test_delivery_gives_up_after_max_attempts_and_skips_unset_channels(
    tmp_path: Path, store: StateStore, smtp, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = """\
    delivery: {max_attempts: 2, retry_delay: 10s}
    """
    catalog = make_catalog(tmp_path, smtp[0], webhook.server.port, extra)
    webhook.answers = [503, 503]
    monkeypatch.delenv("HOOK_TOKEN")  # the hook cannot be used here: skipped, not retried
    clock = ManualClock(dt.datetime.now(UTC))
    service = NotificationService(catalog, store, clock)
    cursor = DetectionCursor()
    service.tick(cursor)
    finish(store, "digest", status.FAILED)
    report = service.tick(cursor)
    assert [why for _id, why in report.delivery.skipped] == ["channel 'hook': $HOOK_TOKEN not set"]
    assert webhook.received == []

    monkeypatch.setenv("HOOK_TOKEN", HOOK_SECRET)
    finish(store, "digest", status.SUCCEEDED)
    clock.advance(16 * 60)
    service.tick(cursor)  # recovery: hook answers 503
    clock.advance(10)
    report = service.tick(cursor)  # 503 again: second and last attempt
    assert len(report.delivery.gave_up) == 1
    given_up = [m for m in store.notifications(["gave_up"])]
    assert [(m.kind, m.attempts) for m in given_up] == [("recovery", 2)]
    assert given_up[0].last_error.startswith("gave up after 2 attempt(s)")
    clock.advance(3600)
    assert service.tick(cursor).delivery.sent == []


# -- detection of every kind of event ------------------------------------------------------------


def test_lateness_failed_checks_unhealthy_agents_and_budgets(tmp_path: Path, store: StateStore, smtp, webhook: Webhook) -> None:
    smtp_port, inbox = smtp
    catalog = make_catalog(tmp_path, smtp_port, webhook.server.port)
    clock = ManualClock(dt.datetime.now(UTC))
    service = NotificationService(catalog, store, clock)
    cursor = DetectionCursor()
    service.tick(cursor)

    finish(store, "digest", status.SUCCEEDED, lateness_ms=1500.0)  # under the 2 s threshold
    finish(store, "digest", status.SUCCEEDED, lateness_ms=4500.0, cost=0.002)  # late, and over budget
    key = finish(store, "digest", status.SUCCEEDED)
    PromptRegistry(store).record_evaluations([
        {"task": "digest", "version": "v1", "idempotency_key": key, "run_id": "r", "check_name": "must_match",
         "passed": False, "score": 0.0, "details": "no match for 'Sources:'", "canary": False},
        {"task": "digest", "version": "v1", "idempotency_key": key, "run_id": "r", "check_name": "max_tokens",
         "passed": True, "score": 1.0, "details": None, "canary": False},
    ])
    store.record_agent_failure("demo", "connection refused", threshold=1, first_probe_s=15.0, now=clock.now())
    report = service.tick(cursor)
    assert sorted(e.kind for e in report.events) == ["agent_unhealthy", "budget_exceeded", "check_failed", "late"]
    titles = {m["title"]: m["message"] for m in webhook.received}
    assert "sent 4.5s after its due time" in titles["[agent-pipelines] task digest ran late"]
    assert "over its threshold of 2s" in titles["[agent-pipelines] task digest ran late"]
    assert "no match for 'Sources:'" in titles["[agent-pipelines] task digest failed check must_match"]
    assert "task digest spent 0.0020 of 0.001 today" in titles["[agent-pipelines] task digest is over its daily budget"]
    # agent health goes to the owner's route (email), not to the task's hook (not subscribed)
    [(subject, text)] = texts(inbox)
    assert subject == "[agent-pipelines] agent demo is unhealthy"
    assert "after 1 consecutive failures" in text and "Last error: connection refused" in text
    assert "Tasks: digest, quiet" in text

    assert service.tick(cursor).events == []  # each fact once
    store.record_agent_success("demo")
    clock.advance(16 * 60)
    report = service.tick(cursor)
    assert [(e.kind, e.subject) for e in report.events] == [("recovery", "agent:demo")]
    assert texts(inbox)[1][0] == "[agent-pipelines] agent demo is healthy again"


def test_an_execution_skipped_for_a_saturated_agent_is_late_news_and_a_superseded_one_is_not(
    tmp_path: Path, store: StateStore, smtp, webhook: Webhook
) -> None:
    smtp_port, _inbox = smtp
    service = NotificationService(make_catalog(tmp_path, smtp_port, webhook.server.port), store, ManualClock(dt.datetime.now(UTC)))
    cursor = DetectionCursor()
    service.tick(cursor)
    now = dt.datetime.now(UTC)
    saturated = "agent saturated: demo had no free slot for 60.0 s, ...; queue length 7 waiting, 2 in flight at its limit 2"
    for key, reason in (("digest-saturated", saturated), ("digest-superseded", "superseded: a newer due time of this task ...")):
        store.claim([Claim(key, "digest", "demo", "run-x", "schedule", now, "v1")])
        store.settle([Settlement(key=key, task="digest", status=status.SKIPPED, run_id="run-x", reason=reason)])
    report = service.tick(cursor)
    assert [(e.kind, e.facts["execution"]) for e in report.events] == [("late", "digest-saturated")]
    (message,) = [m for m in webhook.received if "digest" in m["title"]]
    assert message["title"] == "[agent-pipelines] task digest missed its due time"
    assert "never ran for its due time" in message["message"] and "queue length 7 waiting" in message["message"]


def test_the_sensor_keeps_its_cursor_and_only_exists_with_channels(
    tmp_path: Path, instance: dg.DagsterInstance, smtp, webhook: Webhook
) -> None:
    catalog = make_catalog(tmp_path, smtp[0], webhook.server.port)
    clock = ManualClock(dt.datetime.now(UTC))
    sensor = build_notification_sensor(catalog, clock)
    assert sensor is not None and sensor.name == SENSOR_NAME
    result = sensor(sensor_context(instance))
    assert result.cursor and json.loads(result.cursor)["executions_after"]
    finish(StateStore.for_instance(instance), "digest", status.FAILED)
    result = sensor(sensor_context(instance, result.cursor))
    assert "1 event(s): 2 message(s) queued" in result.skip_reason.skip_message
    assert [m["title"] for m in webhook.received] == ["[agent-pipelines] task digest failed (failed)"]
    result = sensor(sensor_context(instance, result.cursor))
    assert result.skip_reason.skip_message.startswith("0 event(s)")

    plain = load_catalog(write_catalog(tmp_path / "plain", "http://127.0.0.1:9", TASKS.replace("    notify:\n      channels: [hook]\n      events: [failure, recovery, late, check_failed, budget_exceeded]\n      late_after: 2s\n", "")))
    assert build_notification_sensor(plain) is None
    assert not build_notification_definitions(plain).sensors
    assert [s.name for s in build_notification_definitions(catalog).sensors] == [SENSOR_NAME]


# -- secrets and validation ------------------------------------------------------------------------


def test_channel_urls_are_read_at_delivery_time_and_redacted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path, 2525, 8080)
    hook = catalog.notifications.channels["hook"]
    resolved = resolve(hook, timeout_s=5)
    assert resolved.url == f"json://127.0.0.1:8080/hook/{HOOK_SECRET}?cto=5&rto=5"
    assert resolved.redact(f"POST {resolved.url} failed") == f"POST {REDACTED} failed"
    assert resolved.redact(f"token {HOOK_SECRET}") == f"token {REDACTED}"
    monkeypatch.setenv("HOOK_TOKEN", "rotated-secret-value-42")
    assert resolve(hook).url.endswith("/hook/rotated-secret-value-42")


def test_catalog_errors_name_file_line_and_field_and_keep_the_tasks(tmp_path: Path) -> None:
    tasks = TASKS.replace("channels: [hook]", "channels: [hoook]").replace(
        "events: [failure, recovery, late, check_failed, budget_exceeded]", "events: [failure, recovery, latte]"
    )
    tasks += (
        "  - name: typo\n"
        "    owner: research\n"
        "    agent: demo\n"
        "    prompt: x\n"
        "    notify: {channels: [hook], windw: 5m}\n"
    )
    directory = write_catalog(tmp_path / "bad", "http://127.0.0.1:9", tasks)
    (directory / "notifications.yaml").write_text(
        textwrap.dedent(
            """\
            notifications:
              channels:
                - name: hook
                  url: "json://127.0.0.1:9/hook"
                - name: leaky
                  url: "mailto://alerts:hunter2@127.0.0.1:25"
                - name: slack
                  url: "slack://T000/B000/XXXX"
                - name: typo_scheme
                  url: "jsn://127.0.0.1:9/"
                - name: both
                  url: "json://127.0.0.1:9/"
                  url_env: BOTH_URL
                - name: team_chat
                  url_env: TEAM_CHAT_URL
              routes:
                - owner: research
                  channels: [hook, nope]
                - owner: "@nobody"
                  channels: [hook]
              retries: 3
            """
        )
    )
    catalog = load_catalog(directory)
    found = {(p.file.rsplit("/", 1)[-1], p.line, p.kind, p.name, p.field): p.message for p in catalog.problems}
    expected = {
        ("notifications.yaml", 21, "notifications", None, "retries"): "unknown field 'retries'",
        ("notifications.yaml", 6, "channel", "leaky", "url"): "the URL holds a password",
        ("notifications.yaml", 8, "channel", "slack", "url"): "slack:// URLs carry their token: use `url_env`",
        ("notifications.yaml", 10, "channel", "typo_scheme", "url"): "unknown apprise URL scheme 'jsn://' (did you mean 'json'?)",
        ("notifications.yaml", 11, "channel", "both", None): "set exactly one of `url` and `url_env`",
        ("notifications.yaml", 18, "route", "research", "channels.1"): "unknown notification channel 'nope'",
        ("notifications.yaml", 19, "route", "@nobody", "owner"): "owner must be a team name, an email address or '*'",
        ("tasks.yaml", 9, "task", "digest", "notify.events.2"): "Input should be 'failure', 'recovery', 'late'",
        ("tasks.yaml", 19, "task", "typo", "notify.windw"): "unknown field 'windw' (did you mean 'window'?)",
    }
    for where, message in expected.items():
        assert where in found, (where, sorted(found))
        assert message in found[where], (message, found[where])
    assert "(the task runs without `notify`)" in found[("tasks.yaml", 19, "task", "typo", "notify.windw")]
    # notifications never take tasks down; valid channels and routes stay
    assert set(catalog.tasks) == {"digest", "quiet", "typo"}
    assert catalog.tasks["digest"].notify is None and catalog.tasks["typo"].notify is None
    assert set(catalog.notifications.channels) == {"hook", "team_chat"}
    assert [r.channels for r in catalog.notifications.routes] == [["hook"]]
    assert "hunter2" not in "\n".join(str(p) for p in catalog.problems)
