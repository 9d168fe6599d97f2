"""Catalog parsing and every validation error, with file, line, spec and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.loader import CatalogProblem, load_catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.versions import prompt_version

BROKEN = Path(__file__).parent / "catalogs" / "broken"
EXAMPLE = Path(__file__).resolve().parents[1] / "catalog"


def _find(problems: tuple[CatalogProblem, ...], name: str | None, field: str | None = None) -> list[CatalogProblem]:
    return [p for p in problems if p.name == name and (field is None or p.field == field)]


@pytest.fixture(scope="module")
def broken():
    return load_catalog(BROKEN)


def test_example_catalog_is_clean() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog.problems == ()
    assert set(catalog.tasks) == {
        "daily_digest", "heartbeat_check", "collect_incidents", "incident_summary", "deploy_review", "triage_tickets",
        "team_status",
    }
    assert set(catalog.fleets) == {"support_fleet"}
    assert set(catalog.sources) == {"ci"}
    # dependency order: upstream first
    names = list(catalog.tasks)
    assert names.index("collect_incidents") < names.index("incident_summary")
    digest = catalog.tasks["daily_digest"]
    assert digest.schedule is not None and digest.schedule.timezone == "Europe/Paris"
    assert digest.owner == "team:research"
    assert digest.retries.count == 3 and digest.retries.delay == 30.0
    assert catalog.agents["demo_openclaw"].model == "openclaw/main"
    assert catalog.agents["demo_hermes"].model == "hermes-agent"


@pytest.mark.parametrize(
    ("name", "field", "file", "line", "message"),
    [
        ("bad_kind", "kind", "agents.yaml", 7, "unknown agent kind 'openai_chatt'"),
        ("bad_kind", "kind", "agents.yaml", 7, "did you mean 'openai_chat'"),
        ("no_url", None, "agents.yaml", 9, "base_url is required for agents of kind 'dify'"),
        ("leaky", "headers", "agents.yaml", 15, "carries a secret"),
        ("unknown_agent", "agent", "tasks.yaml", 11, "unknown agent 'goood_agent' (did you mean 'good_agent'?)"),
        ("bad_cron", "schedule.cron", "tasks.yaml", 18, "invalid cron expression '61 * * * *'"),
        ("bad_zone", "schedule.timezone", "tasks.yaml", 24, "unknown IANA time zone 'Mars/Olympus'"),
        ("typo_field", "promt", "tasks.yaml", 29, "unknown field 'promt' (did you mean 'prompt'?)"),
        ("typo_field", "prompt", "tasks.yaml", 26, "required field is missing"),
        ("undefined_var", "prompt", "tasks.yaml", 34, "undefined template variable 'whom'"),
        ("cycle_a", "depends_on", "tasks.yaml", 41, "dependency cycle: cycle_a -> cycle_b -> cycle_a"),
        ("cycle_b", "depends_on", "tasks.yaml", 47, "dependency cycle"),
        ("after_cycle", "depends_on.0", "tasks.yaml", 53, "depends on task 'cycle_a', which is invalid"),
        ("twice", "name", "tasks.yaml", 55, "duplicate task name 'twice'"),
        ("twice", "name", "more.yaml", 2, "duplicate task name 'twice'"),
        ("depends_on_bad", "depends_on.0", "tasks.yaml", 64, "depends on task 'bad_cron', which is invalid"),
        ("reads_wrong_upstream", "prompt", "tasks.yaml", 69, "upstream.fine but 'fine' is not in depends_on"),
        ("uses_invalid_agent", "agent", "tasks.yaml", 74, "agent 'leaky' is invalid"),
        ("bad_template", "prompt", "tasks.yaml", 80, "template syntax error"),
    ],
)
def test_every_problem_is_located(broken, name, field, file, line, message) -> None:
    matches = [
        p
        for p in _find(broken.problems, name, field)
        if p.file.endswith(file) and p.line == line and message in p.message
    ]
    assert matches, f"no problem {name}/{field} at {file}:{line} containing {message!r}; got:\n" + "\n".join(
        map(str, broken.problems)
    )


def test_file_level_problems(broken) -> None:
    file_problems = [p for p in broken.problems if p.kind == "file"]
    assert any(p.file.endswith("more.yaml") and p.line == 6 and "unknown top-level key 'typo_top'" in p.message for p in file_problems)
    assert any(p.file.endswith("syntax.yaml") and p.line and "invalid YAML" in p.message for p in file_problems)


def test_valid_remainder_survives(broken) -> None:
    # Only `fine` is valid; everything broken, duplicated or downstream of a broken task is dropped.
    assert list(broken.tasks) == ["fine"]
    assert set(broken.agents) == {"good_agent"}
    assert not broken.ok


def test_problem_string_names_file_line_task_and_field(broken) -> None:
    rendered = str(_find(broken.problems, "bad_cron", "schedule.cron")[0])
    assert rendered.endswith("tasks.yaml:18: task 'bad_cron', field 'schedule.cron': invalid cron expression '61 * * * *'")


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dup.yaml").write_text("tasks:\n  - name: a\n    owner: x\n    owner: y\n")
    catalog = load_catalog(tmp_path)
    assert any(p.line == 4 and "duplicate key 'owner'" in p.message for p in catalog.problems)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    assert "does not exist" in load_catalog(tmp_path / "nope").problems[0].message
    assert "no .yaml" in load_catalog(tmp_path).problems[0].message


def test_upstream_only_with_depends_on(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            agents: [{name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}]
            tasks:
              - {name: t, owner: x, agent: a, prompt: "{{ upstream.other }}"}
            """
        )
    )
    problems = load_catalog(tmp_path).problems
    assert any(p.name == "t" and "only available to tasks with `depends_on`" in p.message for p in problems)


_ITEMS_CATALOG = """\
agents: [{name: a, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}]
tasks:
  - {name: regular, owner: x, agent: a, prompt: p}
  - {name: broken_regular, owner: x, agent: nope, prompt: p}
  - {name: batch_ok, owner: x, agent: a, shards: 2, prompt: p, items: {glob: "data/*.csv"}}
  - name: two_sources
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {glob: "*.csv", sql: "SELECT 1", url_env: DB}
  - name: no_url_env
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {sql: "SELECT 1"}
  - name: bad_paging
    owner: x
    agent: a
    shards: 2
    prompt: p
    items:
      http:
        url: https://api.example/tickets
        pagination: {cursor: {}, page: {}}
  - name: secret_url
    owner: x
    agent: a
    shards: 2
    prompt: p
    items:
      http: {url: "https://me:pw@api.example/tickets"}
  - name: unknown_output
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {from_output: regulr}
  - name: output_of_batch
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {from_output: batch_ok}
  - name: output_of_broken
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {from_output: broken_regular}
  - name: sharded_sql
    owner: x
    agent: a
    shard_by: region
    prompt: p
    items: {sql: "SELECT 1", url_env: DB}
  - name: typo_items
    owner: x
    agent: a
    shards: 2
    prompt: p
    items: {sq1: "SELECT 1"}
  - {name: reads_output, owner: x, agent: a, shards: 2, prompt: p, items: {from_output: regular, id_column: id}}
"""


@pytest.mark.parametrize(
    ("name", "field", "line_of", "message"),
    [
        ("two_sources", "items", 'items: {glob: "*.csv"', "set exactly one items source: one of `path`, `glob`, `sql`, `http`, `from_task`, `from_output` (got `glob`, `sql`)"),
        ("no_url_env", "items", "items: {sql", "`sql` needs `url_env`"),
        ("bad_paging", "items.http.pagination", "pagination:", "set exactly one of `cursor: {param, field}`"),
        ("secret_url", "items.http.url", "http: {url", "the URL holds a password: send credentials with `headers_env`"),
        ("unknown_output", "items.from_output", "from_output: regulr", "unknown task 'regulr' (did you mean 'regular'?)"),
        ("output_of_batch", "items.from_output", "from_output: batch_ok", "task 'batch_ok' is a batch task: read its results with `items.from_task`"),
        ("output_of_broken", "items.from_output", "from_output: broken_regular", "depends on task 'broken_regular', which is invalid"),
        ("sharded_sql", "shard_by", "shard_by: region", "items from `sql` need `shards: N`"),
        ("typo_items", "items.sq1", "items: {sq1", "unknown field 'sq1'"),
    ],
)
def test_items_sources_problems_name_file_line_task_and_field(tmp_path: Path, name, field, line_of, message) -> None:
    (tmp_path / "c.yaml").write_text(_ITEMS_CATALOG)
    catalog = load_catalog(tmp_path)
    line = next(number for number, text in enumerate(_ITEMS_CATALOG.splitlines(), start=1) if line_of in text)
    rendered = [str(p) for p in _find(catalog.problems, name, field)]
    assert any(f"c.yaml:{line}: task {name!r}, field {field!r}: " in r and message in r for r in rendered), rendered
    assert name not in catalog.tasks


def test_items_sources_that_are_valid_load(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(_ITEMS_CATALOG)
    catalog = load_catalog(tmp_path)
    assert {"regular", "batch_ok", "reads_output"} <= set(catalog.tasks)
    assert list(catalog.tasks).index("regular") < list(catalog.tasks).index("reads_output"), "upstream first"
    batch_ok = catalog.tasks["batch_ok"].items
    assert batch_ok is not None and batch_ok.glob == str(tmp_path.resolve() / "data" / "*.csv")


@pytest.mark.parametrize(
    ("raw", "seconds"), [("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), (15, 15), ("2.5", 2.5)]
)
def test_durations(raw, seconds) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "-1", -1, True, "5 parsecs"])
def test_bad_durations(raw) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_prompt_version_tracks_prompt_not_operational_fields() -> None:
    catalog = load_catalog(EXAMPLE)
    task = catalog.tasks["daily_digest"]
    agent = catalog.agents[task.agent]
    base = prompt_version(task, agent)
    assert base == catalog.prompt_versions["daily_digest"]
    changed_prompt = TaskSpec.model_validate({**task.model_dump(), "prompt": task.prompt + " Be brief."})
    changed_timeout = TaskSpec.model_validate({**task.model_dump(), "timeout": 999, "retries": {"count": 9}})
    assert prompt_version(changed_prompt, agent) != base
    assert prompt_version(changed_timeout, agent) == base


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_pipelines.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_validate_reports_every_problem_and_exits_non_zero() -> None:
    result = _validate(BROKEN)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(load_catalog(BROKEN).problems)
    assert any("tasks.yaml:18: task 'bad_cron', field 'schedule.cron'" in line for line in lines)
    assert "20 problem(s)" in result.stderr


def test_cli_validate_example_catalog_is_clean() -> None:
    result = _validate(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s)" in result.stdout
