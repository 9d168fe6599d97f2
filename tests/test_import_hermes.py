"""`agent-pipelines import hermes` / `export hermes` against the real Hermes Agent (0.19.0).

Jobs are created through Hermes's own API server (`POST /api/jobs`) and CLI (`hermes cron
create`); the import reads and pauses them through the API and takes Hermes's time zone
(Asia/Kolkata here) from its HERMES_HOME. One Hermes serves the module (start ~5 s; the first
run on a machine installs it, 1-2 min: see tests/support/hermes.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.cli import main
from agent_pipelines.instance import instance_yaml
from agent_pipelines.scheduling.timing import next_due_time
from tests.support.fake_llm import RunningFakeLlm, run_fake_llm
from tests.support.hermes import RunningHermes, ensure_hermes, run_hermes

UTC = dt.timezone.utc
KEY_ENV = "HERMES_IMPORT_KEY"
ZONE = "Asia/Kolkata"


@pytest.fixture(scope="module")
def llm() -> Iterator[RunningFakeLlm]:
    with run_fake_llm() as server:
        yield server


@pytest.fixture(scope="module")
def hermes(llm: RunningFakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHermes]:
    with run_hermes(tmp_path_factory.mktemp("hermes"), llm, extra_config={"timezone": ZONE}) as running:
        yield running


@pytest.fixture(autouse=True)
def _environment(hermes: RunningHermes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(KEY_ENV, hermes.api_key)


def api_job(hermes: RunningHermes, **body: Any) -> dict[str, Any]:
    response = hermes.client.post("/api/jobs", json=body, headers=hermes.headers())
    assert response.status_code == 200, response.text
    return response.json()["job"]


def cli_job(hermes: RunningHermes, *args: str) -> str:
    """`hermes cron create ...` with this Hermes's HERMES_HOME; the new job's id."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(hermes.home), "HERMES_HOME": str(hermes.hermes_home)}
    out = subprocess.run([str(ensure_hermes()), "cron", "create", *args], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Created job:"))


def jobs(hermes: RunningHermes) -> dict[str, dict[str, Any]]:
    response = hermes.client.get("/api/jobs", params={"include_disabled": "true"}, headers=hermes.headers())
    return {job["id"]: job for job in response.json()["jobs"]}


def run(*args: str) -> tuple[int, str, Any]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return result.exit_code, result.stdout + result.stderr, report


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_import_disable_reimport_and_export(hermes: RunningHermes, tmp_path: Path) -> None:
    soon = (dt.datetime.now(UTC) + dt.timedelta(days=2)).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    ids = {
        "Weekday digest": api_job(hermes, name="Weekday digest", schedule="0 9 * * 1-5", prompt="Digest of {{ news }}.")["id"],
        "Every 45": api_job(hermes, name="Every 45", schedule="every 45m", prompt="Check the queue.",
                            deliver="telegram:-100123", repeat=5)["id"],
        "Launch": api_job(hermes, name="Launch", schedule=soon.replace(microsecond=0).isoformat(), prompt="Launch day.")["id"],
        "Half past nine": cli_job(hermes, "30 9 * * *", "From the CLI.", "--name", "Half past nine"),
        "With seconds": cli_job(hermes, "0 9 * * * 30", "Seconds last.", "--name", "With seconds"),
    }
    (hermes.hermes_home / "scripts").mkdir(exist_ok=True)
    (hermes.hermes_home / "scripts" / "check.py").write_text("print('disk ok')\n")
    ids["Watchdog"] = cli_job(hermes, "every 2h", "--script", "check.py", "--no-agent", "--name", "Watchdog")
    before = jobs(hermes)

    root = tmp_path / "catalog"
    root.mkdir()
    (root / "notifications.yaml").write_text("notifications:\n  channels:\n    - {name: telegram, url_env: TG_URL}\n")
    args = ["--name", "hermes_ops", "--base-url", hermes.url, "--auth-env", KEY_ENV, "--state-dir", str(hermes.hermes_home),
            "--catalog", str(root)]
    checked_at = dt.datetime.now(UTC)
    code, output, _ = run("import", "hermes", *args, "--disable-source")
    assert code == 0, output

    catalog = load_catalog(root)
    assert catalog.problems == (), catalog.problems
    tasks = {t.tags["source_job_id"]: t for t in catalog.tasks.values()}
    names = {n: tasks[i].name for n, i in ids.items() if i in tasks}
    assert names == {"Weekday digest": "hermes_ops_weekday_digest", "Every 45": "hermes_ops_every_45",
                     "Launch": "hermes_ops_launch", "Half past nine": "hermes_ops_half_past_nine",
                     "With seconds": "hermes_ops_with_seconds"}
    assert "Watchdog" in output and "no_agent job" in output
    digest = tasks[ids["Weekday digest"]]
    assert digest.schedule.cron == "0 9 * * 1-5" and digest.schedule.timezone == ZONE
    assert digest.prompt == "{% raw %}Digest of {{ news }}.{% endraw %}"
    assert tasks[ids["With seconds"]].schedule.cron == "30 0 9 * * *"
    every = tasks[ids["Every 45"]]
    assert every.schedule.every == 2700 and every.notify.channels == ["telegram"]
    assert "repeat limit not carried (5 of 5 runs left)" in output
    assert catalog.agents["hermes_ops"].kind == "hermes" and catalog.agents["hermes_ops"].auth_env == KEY_ENV

    # Hermes's own next run (in Asia/Kolkata) is each task's next due time.
    for name, job_id in ids.items():
        if job_id in tasks:
            expected = when(before[job_id]["next_run_at"])
            assert next_due_time(tasks[job_id].schedule, min(checked_at, expected) - dt.timedelta(milliseconds=1)) == expected, name

    # With its API server down, the same jobs are read from HERMES_HOME/cron/jobs.json.
    offline = ["--name", "hermes_offline", "--base-url", "http://127.0.0.1:9", "--auth-env", KEY_ENV,
               "--state-dir", str(hermes.hermes_home), "--catalog", str(root)]
    code, output, report = run("import", "hermes", *offline, "--dry-run", "--json")
    assert code == 0 and "cron/jobs.json (the API server was unreachable)" in report["gateways"][0]["source"], output
    assert {j["job_id"]: j["task"] for j in report["jobs"]} == {
        i: names[n].replace("hermes_ops_", "hermes_offline_") if n in names else None for n, i in ids.items()
    }

    # Paused, not deleted; the job that was not imported keeps running in Hermes.
    paused = jobs(hermes)
    assert set(paused) == set(before)
    assert {n for n, i in ids.items() if paused[i]["state"] == "paused" and not paused[i]["enabled"]} == set(names)
    assert paused[ids["Watchdog"]]["enabled"]

    # Again: nothing changes.
    text = (root / "imported" / "hermes_ops.yaml").read_text()
    code, output, report = run("import", "hermes", *args, "--json")
    assert code == 0, output
    assert {j["action"] for j in report["jobs"] if j["status"] == "imported"} == {"unchanged"}
    assert (root / "imported" / "hermes_ops.yaml").read_text() == text

    # A job deleted in Hermes meanwhile: export resumes the others and re-creates it under the
    # task's name; a second export finds them all on (that one by its name).
    assert hermes.client.delete(f"/api/jobs/{ids['Half past nine']}", headers=hermes.headers()).status_code == 200
    exported_at = dt.datetime.now(UTC)
    code, output, _ = run("export", "hermes", *args)
    assert code == 0 and "re-created" in output, output
    resumed = jobs(hermes)
    assert all(resumed[i]["enabled"] and resumed[i]["state"] == "scheduled" for n, i in ids.items() if n != "Half past nine")
    (again,) = [j for j in resumed.values() if j["name"] == "hermes_ops_half_past_nine"]
    assert again["schedule"]["expr"] == "30 9 * * *" and again["prompt"] == "From the CLI." and again["enabled"]
    for name, job in [(n, resumed[ids[n]]) for n in ("Weekday digest", "Launch", "With seconds")] + [("Half past nine", again)]:
        expected = when(job["next_run_at"])
        assert next_due_time(tasks[ids[name]].schedule, min(exported_at, expected) - dt.timedelta(milliseconds=1)) == expected, name
    code, output, report = run("export", "hermes", *args, "--disable-tasks", "--json")
    assert code == 0 and {a["plan"] for a in report} == {"already"}, output
    assert len(jobs(hermes)) == len(before), "nothing created twice"
    assert not any(t.enabled for t in load_catalog(root).tasks.values()), "--disable-tasks turned the tasks off"

    # An import now finds the re-created job for its task (no duplicate) and mirrors the jobs' state.
    code, output, report = run("import", "hermes", *args, "--json")
    assert code == 0, output
    job = next(j for j in report["jobs"] if j["job_id"] == again["id"])
    assert (job["task"], job["action"]) == ("hermes_ops_half_past_nine", "updated")
    assert len(load_catalog(root).tasks) == len(names)
