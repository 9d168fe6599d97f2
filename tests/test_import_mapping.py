"""Importing OpenClaw and Hermes jobs, the pure parts: names, prompts, schedules, delivery, the
catalog writer (idempotent, never touching hand-written lines) and the gateways file.

The job dicts are in the shapes the real products store (read from OpenClaw 2026.9.6's
CronJobSchema and hermes-agent 0.19.0's cron/jobs.py); tests/test_import_openclaw.py and
tests/test_import_hermes.py check the same against the running products.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.catalog.templates import render
from agent_pipelines.importers import hermes, openclaw
from agent_pipelines.importers.catalog_file import (
    CatalogState,
    CatalogWriteError,
    content_digest,
    plan_import,
    set_task_enabled,
    validate_texts,
    write_atomic,
)
from agent_pipelines.importers.gateways import GatewayError, GatewaySpec, load_gateways
from agent_pipelines.importers.mapping import (
    ChannelMap,
    JobResult,
    agent_name,
    is_due_time,
    literal_prompt,
    slug,
    task_name,
)
from agent_pipelines.scheduling.timing import due_times

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
NO_CHANNELS = ChannelMap({}, frozenset())
CLAW = GatewaySpec(name="claw", kind="openclaw", base_url="http://127.0.0.1:18789", auth_env="CLAW_TOKEN")
HERMES = GatewaySpec(name="herm", kind="hermes", base_url="http://127.0.0.1:8642", auth_env="HERMES_KEY")


def ms(moment: str) -> int:
    return int(dt.datetime.fromisoformat(moment).timestamp() * 1000)


def claw_job(**overrides: Any) -> dict[str, Any]:
    job = {
        "id": "a2f75736-2109-483b-808c-0764a5820b2a", "name": "Morning brief", "enabled": True,
        "createdAtMs": ms("2026-12-01T00:00:00+00:00"),
        "schedule": {"kind": "cron", "expr": "30 0 9 * * 1-5", "tz": "Europe/Berlin"},
        "sessionTarget": "isolated", "wakeMode": "now",
        "payload": {"kind": "agentTurn", "message": "Summarize overnight updates.", "toolsAllow": ["*"]},
        "delivery": {"mode": "none"}, "state": {"nextRunAtMs": ms("2026-12-03T08:00:30+00:00")},
    }
    job.update(overrides)
    return job


def map_claw(job: dict[str, Any], channels: ChannelMap = NO_CHANNELS, zone: str = "UTC") -> JobResult:
    return openclaw.map_jobs([job], CLAW, channels, NOW, zone, True)[0]


def hermes_job(**overrides: Any) -> dict[str, Any]:
    job = {
        "id": "a604c350c82a", "name": "Morning", "prompt": "Summarize overnight", "skills": [], "skill": None,
        "model": None, "provider": None, "base_url": None, "script": None, "no_agent": False, "context_from": None,
        "schedule": {"kind": "cron", "expr": "0 9 * * 1-5", "display": "0 9 * * 1-5"},
        "repeat": {"times": None, "completed": 0}, "enabled": True, "state": "scheduled",
        "created_at": "2026-12-03T07:33:46.515224+00:00", "next_run_at": "2026-12-03T09:00:00+00:00",
        "deliver": "local", "origin": None, "enabled_toolsets": None, "workdir": None,
    }
    job.update(overrides)
    return job


def map_hermes(job: dict[str, Any], channels: ChannelMap = NO_CHANNELS, zone: str = "UTC") -> JobResult:
    return hermes.map_jobs([job], HERMES, channels, NOW, zone, False)[0]


# --- names and prompts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Morning brief", "morning_brief"), ("  Été: 9h!! ", "t_9h"), ("2nd run", "job_2nd_run"), ("???", "job")],
)
def test_slug(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_task_names_are_agent_job_bounded_and_collisions_get_a_stable_suffix() -> None:
    taken: set[str] = set()
    first = task_name("claw", "Hourly check", "job-1", "claw", taken)
    taken.add(first)
    second = task_name("claw", "Hourly check", "job-2", "claw", taken)
    assert first == "claw_hourly_check"
    assert second.startswith("claw_hourly_check_") and len(second) == len("claw_hourly_check_") + 6
    # The suffix comes from the job, not the order: asked again it is the same.
    assert task_name("claw", "Hourly check", "job-2", "claw", {first}) == second
    long = task_name("a" * 40, "b" * 60, "x", "g", set())
    assert len(long) <= 63 and long.startswith("a" * 40 + "_b")
    assert agent_name("claw", "main") == "claw" and agent_name("claw", "Ops Team") == "claw_ops_team"


@pytest.mark.parametrize(
    "text",
    ["plain", "Use {{ braces }} and {% tags %} and {# notes #}", "tricky {% endraw %} {{ x }}", "ends }} only", "x\n{{\n"],
)
def test_literal_prompts_render_to_exactly_their_text(text: str) -> None:
    assert render(literal_prompt(text), {}) == text


# --- OpenClaw --------------------------------------------------------------------------------


def test_openclaw_seconds_first_cron_with_its_time_zone_and_next_run() -> None:
    result = map_claw(claw_job())
    assert result.status == "imported" and result.agent == "claw"
    task = result.task
    assert task["schedule"] == {"cron": "30 0 9 * * 1-5", "timezone": "Europe/Berlin"}
    assert task["prompt"] == "Summarize overnight updates." and task["session"] == "isolated"
    assert task["timeout"] == "1h" and task["misfire"] == {"policy": "latest"} and task["enabled"] is True
    assert task["overload"] == "skip_while_running", "OpenClaw skips a slot while the job still runs"
    assert result.notes == []  # OpenClaw's next run is one of the task's due times


def test_openclaw_top_of_hour_stagger_becomes_the_exact_offset() -> None:
    # Values read from a real gateway: job f048e681-... staggered by 83,246 ms.
    job = claw_job(id="f048e681-23f5-481a-a601-53a4797e4e74",
                   schedule={"kind": "cron", "expr": "0 * * * *", "staggerMs": 300000},
                   state={"nextRunAtMs": 1796284883246})
    result = map_claw(job)
    assert result.task["schedule"] == {"cron": "0 * * * *", "timezone": "UTC", "offset": "83.246s"}
    assert is_due_time(result.task["schedule"], dt.datetime.fromtimestamp(1796284883.246, UTC))
    assert not any("next run" in n for n in result.notes)
    # No explicit staggerMs: a top-of-hour expression still gets the default 5-minute window.
    assert openclaw.stagger_offset_ms(job["id"], {"kind": "cron", "expr": "0 */2 * * *"}) == 83246
    assert openclaw.stagger_offset_ms(job["id"], {"kind": "cron", "expr": "0 9 * * *"}) == 0
    assert openclaw.stagger_offset_ms(job["id"], {"kind": "cron", "expr": "0 * * * *", "staggerMs": 0}) == 0


def test_openclaw_interval_keeps_its_grid_and_one_shot_its_time() -> None:
    every = map_claw(claw_job(schedule={"kind": "every", "everyMs": 90000, "anchorMs": ms("2026-12-03T06:00:00+00:00")},
                              state={"nextRunAtMs": ms("2026-12-03T07:01:30+00:00")}))
    assert every.task["schedule"] == {"every": "90s", "anchor": "2026-12-03T07:01:30+00:00"}
    at = map_claw(claw_job(schedule={"kind": "at", "at": "2027-02-01T16:00:00.000Z"}, deleteAfterRun=True))
    assert at.task["schedule"] == {"at": "2027-02-01T16:00:00+00:00"} and "overload" not in at.task
    past = map_claw(claw_job(schedule={"kind": "at", "at": "2026-12-01T16:00:00.000Z"}, state={"lastRunAtMs": 1}))
    assert past.status == "not_mapped" and "has passed (it ran)" in past.reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"payload": {"kind": "systemEvent", "text": "Reminder"}, "sessionTarget": "main"}, "payload systemEvent"),
        ({"payload": {"kind": "command", "argv": ["sh", "-lc", "x"]}}, "payload command"),
        ({"payload": {"kind": "script", "script": "json({})"}}, "payload script"),
        ({"payload": {"kind": "heartbeat"}}, "payload heartbeat"),
        ({"trigger": {"script": "json({fire:true})"}}, "condition trigger"),
        ({"schedule": {"kind": "stream", "command": ["tail", "-f", "x"]}}, "schedule stream"),
        ({"schedule": {"kind": "on-exit", "command": "make"}}, "schedule on-exit"),
        ({"schedule": {"kind": "cron", "expr": "0 9 15 * +1"}}, "`+` day-of-week"),
        ({"schedule": {"kind": "every", "everyMs": 500}}, "under 1 s"),
        ({"payload": {"kind": "agentTurn", "message": "  "}}, "without a message"),
    ],
)
def test_openclaw_jobs_that_are_not_mapped_say_why(overrides: dict[str, Any], reason: str) -> None:
    result = map_claw(claw_job(**overrides))
    assert result.status == "not_mapped" and reason in result.reason and result.task is None


def test_openclaw_system_jobs_and_other_agents() -> None:
    system = map_claw(claw_job(declarationKey="skill-collection-review:main"))
    assert system.status == "skipped" and "system job" in system.reason
    ops = map_claw(claw_job(agentId="ops"))
    assert ops.agent == "claw_ops" and ops.task["agent"] == "claw_ops"
    (entry,) = openclaw.agents_for(CLAW, [ops])
    assert entry.as_yaml() == {"name": "claw_ops", "kind": "openclaw", "description": entry.description,
                               "base_url": "http://127.0.0.1:18789", "auth_env": "CLAW_TOKEN", "agent_id": "ops"}


def test_openclaw_settings_not_carried_are_listed() -> None:
    result = map_claw(claw_job(
        sessionTarget="session:standup",
        payload={"kind": "agentTurn", "message": "m", "model": "opus", "thinking": "high", "toolsAllow": ["read"],
                 "timeoutSeconds": 300},
        pacing={"min": "15m"},
    ))
    assert result.task["session"] == "task" and result.task["timeout"] == "5m"
    notes = "\n".join(result.notes)
    for fragment in ("persistent session 'standup'", "model override 'opus'", "thinking level 'high'",
                     "tool allow-list ['read']", "pacing"):
        assert fragment in notes


def test_openclaw_delivery_is_a_comment_and_failure_alerts_a_notify_route() -> None:
    channels = ChannelMap({"telegram": "ops_tg"}, frozenset({"ops_tg", "slack"}))
    job = claw_job(delivery={"mode": "announce", "channel": "telegram", "to": "-1001234567890"},
                   failureAlert={"channel": "slack", "to": "channel:C1"})
    result = map_claw(job, channels)
    assert result.comments == ["delivery: announce to telegram -1001234567890", "failure alert: announce to slack channel:C1"]
    assert result.task["notify"] == {"channels": ["ops_tg", "slack"], "events": ["failure", "recovery"]}
    assert any("output delivery (announce to telegram -1001234567890) not carried" in n for n in result.notes)
    unmapped = map_claw(claw_job(delivery={"mode": "announce", "channel": "discord", "to": "user:1"}), channels)
    assert "notify" not in unmapped.task
    assert any("--notify-channel discord=<channel>" in n for n in unmapped.notes)
    off = map_claw(claw_job(delivery={"mode": "announce", "channel": "telegram", "to": "1"}, failureAlert=False), channels)
    assert "notify" not in off.task


def test_a_next_run_that_is_not_a_due_time_is_reported() -> None:
    # The gateway host runs in New York, the job has no time zone, the import guessed UTC.
    job = claw_job(schedule={"kind": "cron", "expr": "0 9 * * *"}, state={"nextRunAtMs": ms("2026-12-03T14:00:00+00:00")})
    result = map_claw(job, zone="UTC")
    assert any("is not a due time of the imported schedule" in n for n in result.notes)
    assert not any("is not a due time" in n for n in map_claw(job, zone="America/New_York").notes)


# --- Hermes ----------------------------------------------------------------------------------


def test_hermes_six_field_cron_has_its_seconds_last() -> None:
    result = map_hermes(hermes_job(schedule={"kind": "cron", "expr": "0 9 * * * 30"}, next_run_at="2026-12-03T09:00:30+00:00"))
    assert result.task["schedule"] == {"cron": "30 0 9 * * *", "timezone": "UTC"} and result.notes == []
    assert result.task["overload"] == "skip_while_running", "Hermes skips a tick while the job still runs"
    assert hermes.seconds_first("1 2 3 4 5 6 7") is None


def test_hermes_interval_once_and_pause() -> None:
    interval = map_hermes(hermes_job(schedule={"kind": "interval", "minutes": 30}, next_run_at="2026-12-03T08:03:46.544709+00:00",
                                     enabled=False, state="paused"))
    assert interval.task["schedule"] == {"every": "30m", "anchor": "2026-12-03T08:03:46.544709+00:00"}
    assert interval.task["enabled"] is False and interval.source_enabled is False
    once = map_hermes(hermes_job(schedule={"kind": "once", "run_at": "2027-01-05T10:00:00+01:00"}, next_run_at="2027-01-05T10:00:00+01:00"))
    assert once.task["schedule"] == {"at": "2027-01-05T10:00:00+01:00"} and "overload" not in once.task
    past = map_hermes(hermes_job(schedule={"kind": "once", "run_at": "2026-01-05T10:00:00+01:00"}))
    assert past.status == "not_mapped" and "has passed" in past.reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"no_agent": True, "script": "watch.sh"}, "no_agent job"),
        ({"script": "collect.py"}, "pre-run script"),
        ({"prompt": "", "skills": ["digest"]}, "runs its skills only"),
        ({"schedule": {"kind": "cron", "expr": "0 9 * * * 0 2027"}}, "5 or 6 fields"),
    ],
)
def test_hermes_jobs_that_are_not_mapped_say_why(overrides: dict[str, Any], reason: str) -> None:
    result = map_hermes(hermes_job(**overrides))
    assert result.status == "not_mapped" and reason in result.reason


def test_hermes_settings_not_carried_and_delivery() -> None:
    channels = ChannelMap({}, frozenset({"telegram"}))
    result = map_hermes(hermes_job(skills=["digest"], model="gpt-x", context_from=["b1fbbe8433f6"],
                                   repeat={"times": 5, "completed": 2}, deliver="telegram:-100123"), channels)
    notes = "\n".join(result.notes)
    for fragment in ("skills ['digest']", "model override 'gpt-x'", "context_from", "3 of 5 runs left",
                     "output delivery to telegram:-100123 not carried"):
        assert fragment in notes
    assert result.comments == ["delivery: telegram:-100123"]
    assert result.task["notify"] == {"channels": ["telegram"], "events": ["failure", "recovery"]}


# --- the catalog writer ----------------------------------------------------------------------

HAND_WRITTEN = """\
# Our hand-written file: every byte of it must survive.
agents:
  - name: demo
    kind: openai_chat
    base_url: http://127.0.0.1:8765
    model: demo-model   # a comment on a value

notifications:
  channels:
    - name: ops_tg
      url_env: OPS_TG_URL

tasks:
  # keep me
  - name: claw_morning_brief      # a hand-written task already has the name the import wants
    owner: ops
    agent: demo
    prompt: |
      Hand-written.
      # not a comment, part of the prompt

  - name: weekly
    owner: ops
    agent: demo
    schedule: "0 9 * * MON"
    prompt: Weekly.
# trailing comment
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def do_import(root: Path, results: list[JobResult], output: Path | None = None) -> Any:
    agents = openclaw.agents_for(CLAW, results)
    plan = plan_import(root, results, agents, {"claw": output or root / "imported" / "claw.yaml"}, "# header")
    added, _ = validate_texts(root, plan.texts)
    assert added == []
    for path in plan.changed:
        write_atomic(path, plan.texts[path])
    return plan


def jobs() -> list[dict[str, Any]]:
    return [
        claw_job(),
        claw_job(id="f048e681-23f5-481a-a601-53a4797e4e74", name="Hourly",
                 schedule={"kind": "cron", "expr": "0 * * * *", "staggerMs": 300000}, state={"nextRunAtMs": 1796284883246}),
        claw_job(id="0b6a1d1e-0000-4000-8000-000000000001", name="Hourly", enabled=False,
                 schedule={"kind": "every", "everyMs": 3_600_000, "anchorMs": ms("2026-12-01T00:00:00+00:00")}, state={}),
        claw_job(id="0b6a1d1e-0000-4000-8000-000000000002", name="Reminder", payload={"kind": "systemEvent", "text": "x"}),
    ]


def test_import_into_an_existing_file_keeps_every_hand_written_line_and_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    target = write(root / "ops.yaml", HAND_WRITTEN)
    results = openclaw.map_jobs(jobs(), CLAW, ChannelMap({}, frozenset({"ops_tg"})), NOW, "UTC", False)
    plan = do_import(root, results, output=target)
    text = target.read_text()
    # The hand-written lines are all still there, in order, untouched.
    original = HAND_WRITTEN.splitlines()
    remaining = iter(text.splitlines())
    assert all(any(line == got for got in remaining) for line in original)
    catalog = load_catalog(root)
    assert catalog.problems == ()
    names = {r.job_name: r.task_name for r in results if r.status == "imported"}
    assert names["Morning brief"].startswith("claw_morning_brief_")  # the hand-written task keeps its name
    assert catalog.tasks["weekly"].prompt == "Weekly." and "claw" in catalog.agents
    assert catalog.tasks["claw_morning_brief"].prompt == "Hand-written.\n# not a comment, part of the prompt"
    hourly = [r for r in results if r.job_name == "Hourly"]
    assert len({r.task_name for r in hourly}) == 2 and {r.action for r in results if r.task_name} == {"new"}
    assert [r.status for r in results].count("not_mapped") == 1
    assert catalog.tasks[names["Morning brief"]].tags["source_job_id"] == "a2f75736-2109-483b-808c-0764a5820b2a"

    # Again: nothing changes, nothing is added twice.
    again = openclaw.map_jobs(jobs(), CLAW, ChannelMap({}, frozenset({"ops_tg"})), NOW, "UTC", False)
    plan = do_import(root, again, output=target)
    assert plan.changed == [] and {r.action for r in again if r.task_name} == {"unchanged"}
    assert target.read_text() == text


def test_reimport_updates_untouched_tasks_and_keeps_hand_edited_ones(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents: []\n")
    first = openclaw.map_jobs(jobs()[:2], CLAW, NO_CHANNELS, NOW, "UTC", False)
    do_import(root, first)
    assert {r.task_name for r in first} == {"claw_morning_brief", "claw_hourly"}
    path = root / "imported" / "claw.yaml"
    text = path.read_text()
    at = text.index("- name: claw_hourly")
    path.write_text(text[:at] + text[at:].replace("prompt: Summarize overnight updates.", "prompt: Mine now.", 1))

    changed = [claw_job(payload={"kind": "agentTurn", "message": "New text."}),
               {**jobs()[1], "payload": {"kind": "agentTurn", "message": "New hourly."}}]
    second = openclaw.map_jobs(changed, CLAW, NO_CHANNELS, NOW, "UTC", False)
    do_import(root, second)
    catalog = load_catalog(root)
    assert catalog.tasks["claw_morning_brief"].prompt == "New text."
    assert catalog.tasks["claw_hourly"].prompt == "Mine now."
    assert {r.task_name: r.action for r in second} == {"claw_morning_brief": "updated", "claw_hourly": "kept"}
    assert any("edited by hand" in n for n in next(r for r in second if r.task_name == "claw_hourly").notes)


def test_a_disabled_source_job_does_not_turn_its_task_off(tmp_path: Path) -> None:
    """After --disable-source the jobs are off in the agent; re-importing keeps the tasks on."""
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents: []\n")
    every = claw_job(schedule={"kind": "every", "everyMs": 90000, "anchorMs": 0}, state={"nextRunAtMs": ms("2026-12-03T07:01:30+00:00")})
    do_import(root, openclaw.map_jobs([every], CLAW, NO_CHANNELS, NOW, "UTC", False))
    off = {**every, "enabled": False, "state": {}}  # a disabled job has no next run
    again = openclaw.map_jobs([off], CLAW, NO_CHANNELS, NOW, "UTC", False)
    plan = do_import(root, again)
    assert plan.changed == [] and again[0].action == "unchanged"
    task = next(iter(load_catalog(root).tasks.values()))
    assert task.enabled and task.schedule.anchor == dt.datetime(2026, 12, 3, 7, 1, 30, tzinfo=UTC)


def test_an_import_that_would_break_the_catalog_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents:\n  - {name: claw, kind: openclaw, base_url: 'http://10.0.0.1:18789'}\n")
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    plan = plan_import(root, results, openclaw.agents_for(CLAW, results), {"claw": root / "imported" / "claw.yaml"}, "#")
    # An agent of that name points elsewhere: the gateway's jobs are not imported at all.
    assert plan.texts == {} and results[0].status == "not_mapped" and "already has agent 'claw'" in results[0].reason
    # A notify channel the catalog lacks makes validation fail before anything is written.
    ok_root = tmp_path / "other"
    write(ok_root / "agents.yaml", "agents: []\n")
    bad = openclaw.map_jobs([claw_job()], CLAW, ChannelMap({}, frozenset({"ghost"})), NOW, "UTC", False)
    bad[0].task["notify"] = {"channels": ["ghost"], "events": ["failure"]}
    plan = plan_import(ok_root, bad, openclaw.agents_for(CLAW, bad), {"claw": ok_root / "imported" / "claw.yaml"}, "#")
    added, _ = validate_texts(ok_root, plan.texts)
    assert added and "ghost" in str(added[0]) and not (ok_root / "imported").exists()


def test_flow_style_task_lists_are_refused_not_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    target = write(root / "t.yaml", "tasks: [{name: a, owner: ops, agent: claw, prompt: x}]\n")
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    with pytest.raises(CatalogWriteError, match="flow-style"):
        plan_import(root, results, [], {"claw": target}, "#")


def test_setting_enabled_edits_one_value_and_keeps_the_digest_valid(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents: []\n")
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    do_import(root, results)
    path = root / "imported" / "claw.yaml"
    before = path.read_text()
    texts = set_task_enabled(root, [results[0].task_name], False)
    after = texts[path]
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 2 and "enabled: false" in changed[0][1] and "import_digest" in changed[1][1]
    path.write_text(after)
    found = CatalogState.scan(root).tasks[results[0].task_name]
    assert found.untouched and found.raw["tags"]["import_digest"] == content_digest(found.raw)


def test_setting_enabled_keeps_a_digest_of_digits_alone_a_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 digest in ~1,800 is digits alone: the importer's dump quotes it, and the edit must both
    replace a quoted one and quote the new one (else YAML reads a number: "would change more than
    that", once in CI's `export --disable-tasks`). Here every digest is made of digits alone."""
    import agent_pipelines.importers.catalog_file as catalog_file

    hex_digest = catalog_file.content_digest
    monkeypatch.setattr(catalog_file, "content_digest", lambda item: hex_digest(item).translate(str.maketrans("abcdef", "012345")))
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents: []\n")
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    do_import(root, results)
    path = root / "imported" / "claw.yaml"
    assert "import_digest: '" in path.read_text(), "the importer's dump quotes a digest of digits"
    path.write_text(set_task_enabled(root, [results[0].task_name], False)[path])
    found = CatalogState.scan(root).tasks[results[0].task_name]
    assert found.raw["enabled"] is False and found.untouched, path.read_text()
    assert isinstance(found.raw["tags"]["import_digest"], str)


# --- gateways file ---------------------------------------------------------------------------


def test_gateways_file_with_a_fleet_entry(tmp_path: Path) -> None:
    path = write(tmp_path / "gateways.yaml", """\
        - {name: claw_eu, kind: openclaw, base_url: "http://10.0.0.5:18789", auth_env: CLAW_EU, timezone: Europe/Berlin}
        - fleet: claws
          kind: openclaw
          base_url_template: "http://claw-{i}.internal:18789"
          count: 3
          auth_env: CLAW_TOKEN
          owner: support
        - {name: hermes_ops, kind: hermes, auth_env: HERMES_OPS, state_dir: /srv/hermes}
    """)
    gateways = load_gateways(path)
    assert [g.name for g in gateways] == ["claw_eu", "claws_node0", "claws_node1", "claws_node2", "hermes_ops"]
    assert gateways[2].base_url == "http://claw-1.internal:18789" and gateways[2].owner == "team:support"
    assert gateways[4].base_url == "http://127.0.0.1:8642"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a, kind: openclaw}\n- {name: a, kind: hermes}\n", "used twice"),
        ("- {name: Bad-Name, kind: openclaw}\n", "entry 1 (Bad-Name): name"),
        ("- {name: h, kind: hermes, cli: openclaw}\n", "OpenClaw settings"),
        ("- {fleet: f, kind: openclaw, count: 2}\n", "base_url_template"),
        ("- {name: a, kind: openclaw, timezone: Mars/Olympus}\n", "unknown IANA time zone"),
    ],
)
def test_gateways_file_errors_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GatewayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_gateways(write(tmp_path / "g.yaml", text))


def test_due_times_of_imported_schedules_match_the_products_rules() -> None:
    """An OpenClaw job staggered by 83.246 s fires 83.246 s after every hour; Hermes's
    `0 9 * * * 30` (seconds last) fires at 09:00:30."""
    claw = openclaw.map_jobs([claw_job(id="f048e681-23f5-481a-a601-53a4797e4e74", schedule={"kind": "cron", "expr": "0 * * * *"})],
                             CLAW, NO_CHANNELS, NOW, "UTC", False)[0]
    from agent_pipelines.importers.mapping import schedule_model

    start = dt.datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    fired = list(due_times(schedule_model(claw.task["schedule"]), start, start + dt.timedelta(hours=2)))
    assert fired == [start + dt.timedelta(hours=h, milliseconds=83246) for h in (0, 1)]
    herm = map_hermes(hermes_job(schedule={"kind": "cron", "expr": "0 9 * * * 30"}))
    fired = list(due_times(schedule_model(herm.task["schedule"]), start, start + dt.timedelta(days=1)))
    assert fired == [dt.datetime(2026, 12, 3, 9, 0, 30, tzinfo=UTC)]
    assert yaml.safe_load("x: {cron: 0 * * * *}")["x"]["cron"] == "0 * * * *"  # the writer's plain style reads back


def test_a_catalog_fleet_is_a_list_of_gateways(tmp_path: Path) -> None:
    from agent_pipelines.importers.gateways import fleet_gateways

    root = tmp_path / "catalog"
    write(root / "fleet.yaml", """\
        fleets:
          - name: claws
            kind: openclaw
            auth_env: CLAW_TOKEN
            nodes: [{name: eu, base_url: "http://10.0.0.5:18789"}, {name: us, base_url: "http://10.0.1.5:18789"}]
          - name: chat
            kind: openai_chat
            model: m
            base_url_template: "http://chat-{i}:8000"
            count: 2
    """)
    catalog = load_catalog(root)
    gateways = fleet_gateways(catalog, "claws", owner="support", timezone="Europe/Berlin")
    assert [(g.name, g.base_url, g.auth_env, g.owner, g.timezone) for g in gateways] == [
        ("claws_eu", "http://10.0.0.5:18789", "CLAW_TOKEN", "team:support", "Europe/Berlin"),
        ("claws_us", "http://10.0.1.5:18789", "CLAW_TOKEN", "team:support", "Europe/Berlin"),
    ]
    with pytest.raises(GatewayError, match="only openclaw and hermes"):
        fleet_gateways(catalog, "chat")
    with pytest.raises(GatewayError, match="no valid fleet 'nope'"):
        fleet_gateways(catalog, "nope")


def test_problems_the_catalog_already_had_do_not_block_an_import(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write(root / "broken.yaml", """\
        agents: [{name: demo, kind: openai_chat, base_url: "http://127.0.0.1:8765", model: m}]
        tasks:
          - {name: triage, owner: ops, agent: demo, prompt: "{{ item.text }}", items: {path: missing.csv}, shards: 2}
    """)
    assert load_catalog(root).problems  # its items file is missing: the message names its path
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    plan = plan_import(root, results, openclaw.agents_for(CLAW, results), {"claw": root / "imported" / "claw.yaml"}, "#")
    added, existing = validate_texts(root, plan.texts)
    assert added == [] and len(existing) == 1


def test_an_existing_matching_agent_is_reused(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    write(root / "agents.yaml", "agents:\n  - {name: claw, kind: openclaw, base_url: 'http://127.0.0.1:18789/', timeout: 5m}\n")
    results = openclaw.map_jobs([claw_job()], CLAW, NO_CHANNELS, NOW, "UTC", False)
    plan = do_import(root, results)
    assert plan.new_agents == [] and results[0].action == "new"
    assert "agents:" not in plan.texts[root / "imported" / "claw.yaml"]
    assert load_catalog(root).agents["claw"].timeout == 300  # the hand-written agent, untouched
