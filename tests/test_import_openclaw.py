"""`agent-pipelines import openclaw` / `export openclaw` against the real OpenClaw gateway.

Jobs are created with OpenClaw's own CLI (`openclaw cron add`), read and changed by the import
through the gateway's RPC (and once through the CLI). One gateway (with a second agent, `ops`)
serves the module; its start takes ~25 s, the first run on a machine installs it (~75 s):
see tests/support/openclaw.py.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.cli import main
from agent_pipelines.instance import instance_yaml
from agent_pipelines.scheduling.timing import next_due_time
from tests.support.fake_llm import RunningFakeLlm, run_fake_llm
from tests.support.openclaw import RunningOpenClaw, run_openclaw

UTC = dt.timezone.utc
TOKEN_ENV = "CLAW_IMPORT_TOKEN"


@pytest.fixture(scope="module")
def llm() -> Iterator[RunningFakeLlm]:
    with run_fake_llm() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(llm: RunningFakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOpenClaw]:
    agents = {"agents": {"entries": {"main": {"default": True}, "ops": {}}}}
    with run_openclaw(tmp_path_factory.mktemp("openclaw-home"), llm, config_overrides=agents) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _environment(gateway: RunningOpenClaw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(TOKEN_ENV, gateway.token)
    monkeypatch.setenv("AGENT_PIPELINES_OPENCLAW_IDENTITY", str(tmp_path / "device.pem"))


def add_jobs(gateway: RunningOpenClaw, jobs: list[list[str]]) -> list[dict[str, Any]]:
    """`openclaw cron add ... --json` for each job, a few at a time (each is a Node process)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: gateway.cli_json("cron", "add", *args, "--json"), jobs))


def listed(gateway: RunningOpenClaw) -> dict[str, dict[str, Any]]:
    """Every job as OpenClaw stored it (its shared SQLite state database, read-only)."""
    conn = sqlite3.connect(f"file:{gateway.state_dir / 'state' / 'openclaw.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT job_json, state_json FROM cron_jobs").fetchall()
    finally:
        conn.close()
    jobs = {}
    for job_json, state_json in rows:
        job = json.loads(job_json)
        job["state"] = json.loads(state_json or "{}")
        job["nextRunAtMs"] = job["state"].get("nextRunAtMs")
        jobs[job["id"]] = job
    return jobs


def catalog_dir(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    root.mkdir()
    (root / "notifications.yaml").write_text(
        "notifications:\n  channels:\n    - {name: ops_tg, url_env: OPS_TG_URL}\n"
    )
    return root


def run(*args: str) -> tuple[int, str, Any]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return result.exit_code, result.stdout + result.stderr, report


def gateway_args(gateway: RunningOpenClaw, root: Path, name: str = "claw") -> list[str]:
    return ["--name", name, "--base-url", gateway.url, "--auth-env", TOKEN_ENV, "--timezone", "UTC", "--catalog", str(root)]


def first_due(schedule: Any, after: dt.datetime) -> dt.datetime | None:
    return next_due_time(schedule, after - dt.timedelta(milliseconds=1))


def test_import_disable_reimport_and_export(gateway: RunningOpenClaw, tmp_path: Path) -> None:
    soon = (dt.datetime.now(UTC) + dt.timedelta(days=3)).replace(microsecond=0)
    created = add_jobs(gateway, [
        ["--name", "Morning brief", "--cron", "30 0 9 * * 1-5", "--tz", "Europe/Berlin", "--session", "isolated",
         "--message", "Summarize overnight {{ updates }}.", "--no-deliver"],
        ["--name", "Hourly check", "--cron", "0 * * * *", "--session", "isolated", "--message", "Anything new?",
         "--announce", "--channel", "telegram", "--to", "-1001234567890"],
        ["--name", "Every two hours", "--every", "2h", "--session", "isolated", "--message", "Ping.", "--no-deliver",
         "--timeout-seconds", "300"],
        ["--name", "Launch day", "--at", soon.isoformat(), "--session", "isolated", "--message", "It is launch day.",
         "--no-deliver"],
        ["--name", "Ops standup", "--agent", "ops", "--cron", "15 10 * * 1-5", "--tz", "Asia/Shanghai",
         "--session", "session:standup", "--message", "Standup notes.", "--no-deliver"],
        ["--name", "Remind me", "--at", soon.isoformat(), "--session", "main", "--system-event", "Reminder: docs"],
        ["--name", "Paused one", "--cron", "0 6 * * *", "--tz", "UTC", "--session", "isolated", "--message", "Off.",
         "--no-deliver", "--disabled"],
    ])
    ids = {job["name"]: job["id"] for job in created}
    before = listed(gateway)
    assert all(before[i]["enabled"] for n, i in ids.items() if n != "Paused one")

    root = catalog_dir(tmp_path)
    checked_at = dt.datetime.now(UTC)
    code, output, _ = run("import", "openclaw", *gateway_args(gateway, root), "--notify-channel", "telegram=ops_tg",
                          "--owner", "ops", "--disable-source")
    assert code == 0, output

    # The catalog validates and holds one task per agent-turn job, named <agent>_<job>.
    catalog = load_catalog(root)
    assert catalog.problems == (), catalog.problems
    tasks = {t.tags["source_job_id"]: t for t in catalog.tasks.values() if t.tags.get("imported_from") == "openclaw"}
    names = {n: tasks[i].name for n, i in ids.items() if i in tasks}
    assert names == {"Morning brief": "claw_morning_brief", "Hourly check": "claw_hourly_check",
                     "Every two hours": "claw_every_two_hours", "Launch day": "claw_launch_day",
                     "Ops standup": "claw_ops_ops_standup", "Paused one": "claw_paused_one"}
    assert catalog.agents["claw_ops"].agent_id == "ops" and catalog.agents["claw"].auth_env == TOKEN_ENV
    morning = tasks[ids["Morning brief"]]
    assert morning.prompt == "{% raw %}Summarize overnight {{ updates }}.{% endraw %}" and morning.owner == "team:ops"
    assert morning.schedule.cron == "30 0 9 * * 1-5" and morning.schedule.timezone == "Europe/Berlin"
    hourly = tasks[ids["Hourly check"]]
    assert hourly.schedule.offset > 0 and hourly.notify.channels == ["ops_tg"]
    assert tasks[ids["Every two hours"]].timeout == 300 and tasks[ids["Ops standup"]].session == "task"
    assert not tasks[ids["Paused one"]].enabled
    assert "# imported: delivery: announce to telegram -1001234567890" in (root / "imported" / "claw.yaml").read_text()
    assert "Remind me" not in names and "payload systemEvent" in output

    # Each task's next due time is the gateway's own next run for the job (stagger included).
    for name, job_id in ids.items():
        if job_id in tasks and before[job_id].get("nextRunAtMs"):
            expected = dt.datetime.fromtimestamp(before[job_id]["nextRunAtMs"] / 1000, UTC)
            assert first_due(tasks[job_id].schedule, min(checked_at, expected)) == expected, name

    # --disable-source turned exactly the imported jobs off, and deleted nothing.
    after = listed(gateway)
    assert set(after) == set(before)
    assert {n for n, i in ids.items() if not after[i]["enabled"]} == set(names)
    assert after[ids["Remind me"]]["enabled"], "a job that was not imported keeps running in OpenClaw"

    # Importing again changes nothing and adds nothing: the jobs are off there, the tasks stay on.
    text = (root / "imported" / "claw.yaml").read_text()
    code, output, report = run("import", "openclaw", *gateway_args(gateway, root), "--notify-channel", "telegram=ops_tg",
                               "--owner", "ops", "--json")
    assert code == 0, output
    assert {j["action"] for j in report["jobs"] if j["status"] == "imported"} == {"unchanged"} and report["files"] == []
    assert (root / "imported" / "claw.yaml").read_text() == text
    assert len(load_catalog(root).tasks) == len(catalog.tasks)

    # Export: the jobs are on again (the one that was off stays off), the same jobs, and each
    # one's next run is again its task's next due time.
    exported_at = dt.datetime.now(UTC)
    code, output, _ = run("export", "openclaw", *gateway_args(gateway, root))
    assert code == 0, output
    back = listed(gateway)
    assert {n for n, i in ids.items() if back[i]["enabled"]} == set(ids) - {"Paused one"}
    for name in ("Morning brief", "Hourly check", "Launch day", "Ops standup"):
        expected = dt.datetime.fromtimestamp(back[ids[name]]["nextRunAtMs"] / 1000, UTC)
        assert first_due(tasks[ids[name]].schedule, min(exported_at, expected)) == expected, name
    code, output, report = run("export", "openclaw", *gateway_args(gateway, root), "--json")
    assert code == 0 and {a["plan"] for a in report} == {"already", "leave"}, output

    # A job deleted in OpenClaw is re-created by export, then found again by import.
    gateway.cli_json("cron", "rm", ids["Every two hours"], "--json")
    code, output, _ = run("export", "openclaw", *gateway_args(gateway, root), "--task", "claw_every_two_hours")
    assert code == 0 and "re-created" in output, output
    recreated = [j for j in listed(gateway).values() if j.get("declarationKey") == "agent-pipelines:claw_every_two_hours"]
    assert len(recreated) == 1 and recreated[0]["enabled"]
    every = tasks[ids["Every two hours"]].schedule
    assert recreated[0]["schedule"]["everyMs"] == 7_200_000
    assert recreated[0]["schedule"]["anchorMs"] == round(every.anchor.timestamp() * 1000)
    assert first_due(every, dt.datetime.now(UTC)) == dt.datetime.fromtimestamp(recreated[0]["nextRunAtMs"] / 1000, UTC)
    code, output, report = run("import", "openclaw", *gateway_args(gateway, root), "--json")
    assert code == 0, output
    job = next(j for j in report["jobs"] if j["job_id"] == recreated[0]["id"])
    assert (job["task"], job["action"]) == ("claw_every_two_hours", "updated")
    assert load_catalog(root).tasks["claw_every_two_hours"].tags["source_job_id"] == recreated[0]["id"]
    assert len(load_catalog(root).tasks) == len(catalog.tasks)


def test_many_gateways_at_once_dry_run_and_the_cli_transport(gateway: RunningOpenClaw, tmp_path: Path) -> None:
    """A gateways file with two entries for the same gateway (one through its RPC, one through
    its CLI): each gets its own agent and `<agent>_<job>` tasks, no collision; --dry-run writes
    nothing."""
    add_jobs(gateway, [["--name", "Shared name", "--cron", "0 7 * * *", "--tz", "UTC", "--session", "isolated",
                        "--message", "One.", "--no-deliver"]])
    root = catalog_dir(tmp_path)
    gateways = tmp_path / "gateways.yaml"
    gateways.write_text(json.dumps([
        {"name": "claw_rpc", "kind": "openclaw", "base_url": gateway.url, "auth_env": TOKEN_ENV, "timezone": "UTC"},
        {"name": "claw_cli", "kind": "openclaw", "base_url": gateway.url, "auth_env": TOKEN_ENV, "timezone": "UTC",
         "agent_ids": ["main"], "cli": [str(gateway.node), str(gateway.entry)],
         # The CLI's own state stays in the test's directory; anything it sends outside loopback is refused.
         "env": {"HOME": str(tmp_path), "HTTPS_PROXY": gateway.proxy.url, "HTTP_PROXY": gateway.proxy.url,
                 "NO_PROXY": "127.0.0.1,localhost,::1"}},
        # Gateway down: its jobs are read from its state directory instead (read-only).
        {"name": "claw_offline", "kind": "openclaw", "base_url": "http://127.0.0.1:9", "auth_env": TOKEN_ENV,
         "timezone": "UTC", "state_dir": str(gateway.state_dir)},
        {"name": "hermes_x", "kind": "hermes", "base_url": "http://127.0.0.1:9"},
    ]))
    code, output, report = run("import", "openclaw", "--gateways", str(gateways), "--catalog", str(root), "--dry-run", "--json")
    assert code == 0, output
    assert not (root / "imported").exists()
    assert [g["name"] for g in report["gateways"]] == ["claw_rpc", "claw_cli", "claw_offline"]
    sources = [g["source"] for g in report["gateways"]]
    assert sources[0].endswith(" via cron.list") and sources[1].endswith(" via openclaw cron list")
    assert sources[2].startswith(str(gateway.state_dir / "state" / "openclaw.sqlite")) and "could not be read" in sources[2]
    shared = sorted(j["task"] for j in report["jobs"] if j["job_name"] == "Shared name")
    assert shared == ["claw_cli_shared_name", "claw_offline_shared_name", "claw_rpc_shared_name"]
    by_gateway = {g: {j["job_id"]: j for j in report["jobs"] if j["gateway"] == g} for g in ("claw_rpc", "claw_offline")}
    assert by_gateway["claw_rpc"].keys() == by_gateway["claw_offline"].keys()
    assert all(by_gateway["claw_offline"][i]["status"] == j["status"] for i, j in by_gateway["claw_rpc"].items())
    gateways.write_text(json.dumps(json.loads(gateways.read_text())[:2]))

    code, output, _ = run("import", "openclaw", "--gateways", str(gateways), "--catalog", str(root))
    assert code == 0, output
    catalog = load_catalog(root)
    assert catalog.problems == () and {"claw_rpc", "claw_cli", "claw_rpc_ops"} <= set(catalog.agents)
    main_tasks = [sum(t.agent == a for t in catalog.tasks.values()) for a in ("claw_rpc", "claw_cli")]
    assert main_tasks[0] == main_tasks[1] > 0 and "claw_cli_ops" not in catalog.agents  # agent_ids: [main]
    assert sorted(p.name for p in (root / "imported").iterdir()) == ["claw_cli.yaml", "claw_rpc.yaml"]

    # Off and on again through the CLI (`openclaw gateway call cron.update`).
    cli_only = tmp_path / "cli_only.yaml"
    cli_only.write_text(json.dumps([json.loads(gateways.read_text())[1]]))
    code, output, report = run("import", "openclaw", "--gateways", str(cli_only), "--catalog", str(root),
                               "--disable-source", "--json")
    assert code == 0, output
    turned_off = [job for job, outcome in report["gateways"][0]["disabled"].items() if outcome == "ok"]
    assert turned_off and not any(listed(gateway)[job]["enabled"] for job in turned_off)
    code, output, _ = run("export", "openclaw", "--gateways", str(cli_only), "--catalog", str(root))
    assert code == 0, output
    assert all(listed(gateway)[job]["enabled"] for job in turned_off)
