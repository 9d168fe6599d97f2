"""Hostile catalogs are bounded: validation reports them at file:line in well under a second,
rendering refuses what would hang or exhaust memory, and the ingress and the code location keep
serving. Every test here would hang (or take gigabytes) without the limits; the timeout fails it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from agent_pipelines.catalog import template_limits
from agent_pipelines.catalog.loader import CatalogProblem, load_catalog
from agent_pipelines.catalog.templates import TemplateProblem, analyze, render
from agent_pipelines.http_server import serve_in_thread
from agent_pipelines.ingress import CatalogSources, create_ingress_app
from agent_pipelines.store import StateStore

pytestmark = pytest.mark.timeout(120)

AGENTS = "agents:\n  - {name: demo, kind: openai_chat, base_url: 'http://127.0.0.1:9', model: m}\n"


def task(name: str, prompt_yaml: str, extra: str = "") -> str:
    return f"  - name: {name}\n    owner: team\n    agent: demo\n    schedule: {{every: 1h}}\n{extra}    prompt: {prompt_yaml}\n"


def write_catalog(root: Path, tasks: str, **files: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "agents.yaml").write_text(AGENTS)
    (root / "tasks.yaml").write_text("tasks:\n" + tasks)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def problems_by_task(problems: tuple[CatalogProblem, ...]) -> dict[str | None, CatalogProblem]:
    return {p.name: p for p in problems}


HOSTILE_PROMPTS = {
    # name: (prompt as written in YAML, words of the error)
    "power": ('"{{ 7 ** 99999999 }}"', "7 ** 99999999 would have about 299,999,997 bits"),
    "repeat": ("\"{{ 'x' * 300000000 }}\"", "a repeated sequence would be 300,000,000 characters long"),
    "wide_format": ("\"{{ '%999999999d' % 1 }}\"", "asks for width 999,999,999"),
    "big_range": ('"{% for i in range(1000000) %}{% endfor %}"', "range() of 1,000,000 items"),
    "nested_loops": (
        '"{% for a in range(10000) %}{% for b in range(10000) %}{{ a }}{% endfor %}{% endfor %}"',
        "nested loops of 100,000,000 iterations",
    ),
    "mro_escape": ("\"{{ ''.__class__.__mro__[1].__subclasses__() }}\"", "is not allowed in templates"),
    "lipsum_escape": ('"{{ lipsum.__globals__ }}"', "attribute '__globals__' is not allowed"),
    "attr_escape": ("\"{{ ''|attr('__class__') }}\"", "attribute '__class__' is not allowed"),
    "gi_frame": ('"{{ task.gi_frame }}"', "attribute 'gi_frame' is not allowed"),
}


def test_validate_reports_each_hostile_template_at_its_line_quickly(tmp_path: Path) -> None:
    tasks = "".join(task(name, prompt) for name, (prompt, _) in HOSTILE_PROMPTS.items()) + task("fine", "hello")
    root = write_catalog(tmp_path / "c", tasks)
    started = time.monotonic()
    catalog = load_catalog(root)
    assert time.monotonic() - started < 10  # seconds, not the minutes (or gigabytes) of an unbounded load
    found = problems_by_task(catalog.problems)
    lines = (root / "tasks.yaml").read_text().splitlines()
    for name, (_, words) in HOSTILE_PROMPTS.items():
        problem = found.get(name)
        assert problem is not None, f"{name} was not reported"
        assert words in problem.message and problem.field == "prompt", (name, problem)
        assert problem.file.endswith("tasks.yaml") and lines[problem.line - 1].strip().startswith("prompt:"), (name, problem)
    assert set(catalog.tasks) == {"fine"}  # the rest of the catalog survives


def test_an_escape_inside_a_block_prompt_is_reported_at_its_own_line(tmp_path: Path) -> None:
    block = "|\n      Summarise the incidents.\n      Be brief.\n      {{ task.__init__.__globals__ }}\n      Thanks.\n"
    root = write_catalog(tmp_path / "c", task("sneaky", block.rstrip("\n")))
    problem = problems_by_task(load_catalog(root).problems)["sneaky"]
    line = (root / "tasks.yaml").read_text().splitlines()[problem.line - 1]
    assert "__globals__" in line and problem.line == 9, problem  # `prompt: |` is line 5, the template starts on 6
    assert "is not allowed in templates" in problem.message


@pytest.mark.parametrize(
    ("template", "context", "words"),
    [
        ("{{ 7 ** n }}", {"n": 99_999_999}, "bits"),
        ("{{ 'x' * n }}", {"n": 300_000_000}, "repeated sequence"),
        ("{% for a in range(n) %}{% for b in range(n) %}{% for c in range(n) %}{% endfor %}{% endfor %}{% endfor %}", {"n": 10_000}, "steps"),
        ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", {}, "`~` concatenation"),
        ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", {}, "concatenation"),
        ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(n) }}", {"n": 60}, "steps"),
        ("{{ s.replace('', s) }}", {"s": "x" * 100_000}, "str.replace"),
        ("{{ 'x'.ljust(n) }}", {"n": 10**9}, "str.ljust"),
        ("{{ '{:>' ~ n ~ '}' }}", {"n": 10**9}, ""),  # builds a format string: harmless until used
        ("{{ ('{:>' ~ n ~ '}').format(1) }}", {"n": 10**9}, "width 1,000,000,000"),
        ("{{ 'x'|center(n) }}", {"n": 10**9}, "center filter"),
        ("{{ 'x'|indent(n) }}", {"n": 10**9}, "indent filter"),
        ("{% for i in range(10000) %}{{ s }}{% endfor %}", {"s": "y" * 1000}, "rendered text exceeds"),
        ("{% set l = [1] %}{{ l.append(2) }}", {}, "unsafe"),
    ],
)
def test_rendering_refuses_what_would_hang_or_exhaust_memory(template: str, context: dict, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The wall-time guard is out of the way, so each case is refused by the guard it names
    # however loaded the machine (CI saw the 2 s guard beat the step budget once).
    monkeypatch.setattr(template_limits, "MAX_SECONDS", 600.0)
    if not words:
        assert render(template, context) == "{:>1000000000}"
        return
    with pytest.raises(TemplateProblem) as raised:
        render(template, context)
    assert words in raised.value.message


def test_a_render_past_its_wall_time_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_SECONDS", 0.0)  # past the deadline at its first check
    with pytest.raises(TemplateProblem, match="ran longer than 0 s"):
        render("{% for a in range(n) %}{% for b in range(n) %}{% endfor %}{% endfor %}", {"n": 100})


def test_ordinary_templates_are_untouched() -> None:
    template = textwrap.dedent(
        """\
        {% macro bullet(text) %}- {{ text|trim|capitalize }}{% endmacro %}
        Report for {{ team|upper }} ({{ '%05.1f' % score }}, {{ '{:>6}'.format(count) }}):
        {% for item in items %}{{ bullet(item) }}
        {% endfor %}{{ items|join(', ') }} {{ 'ab' * 3 }} {{ 2 ** 10 }} {{ 'x' ~ 1 }} {{ 'c'|center(5) }}|"""
    )
    analyze(template)
    out = render(template, {"team": "sre", "score": 9.5, "count": 42, "items": ["disk", " cpu "]})
    assert out.splitlines() == [
        "",
        "Report for SRE (009.5,     42):",
        "- Disk",
        "- Cpu",
        "disk,  cpu  ababab 1024 x1   c  |",
    ]


def test_billion_laughs_deep_nesting_and_self_aliases_are_refused_at_their_line(tmp_path: Path) -> None:
    laughs = ["  - name: laughs", "    owner: team", "    agent: demo", "    schedule: {every: 1h}", "    prompt: hi", "    variables:"]
    laughs.append('      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    for prev, name in zip("abcdefgh", "bcdefghi"):
        laughs.append(f"      {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    root = write_catalog(
        tmp_path / "c",
        task("fine", "hello"),
        **{
            "laughs.yaml": "tasks:\n" + "\n".join(laughs) + "\n",
            "deep.yaml": "tasks: " + "[" * 100_000 + "]" * 100_000 + "\n",
            "cycle.yaml": "tasks:\n  - &t\n    name: cyc\n    loop: [*t]\n",
        },
    )
    started = time.monotonic()
    catalog = load_catalog(root)
    assert time.monotonic() - started < 10
    by_file = {Path(p.file).name: p for p in catalog.problems}
    assert "expands to more than 1,000,000 nodes" in by_file["laughs.yaml"].message
    assert by_file["laughs.yaml"].line is not None and 7 <= by_file["laughs.yaml"].line <= 15
    assert "nest" in by_file["deep.yaml"].message
    assert "refers to the anchor that contains it" in by_file["cycle.yaml"].message
    assert set(catalog.tasks) == {"fine"}


def test_size_limits_are_the_operators_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_prompt = '"' + "x" * 150_000 + '"'
    root = write_catalog(tmp_path / "c", task("long", long_prompt) + task("fine", "hello"))
    problem = problems_by_task(load_catalog(root).problems)["long"]
    assert problem.field == "prompt" and problem.line == 6
    assert "150,000 characters, over the limit of 100,000" in problem.message
    assert "AGENT_PIPELINES_MAX_PROMPT_CHARS" in problem.message

    monkeypatch.setenv("AGENT_PIPELINES_MAX_PROMPT_CHARS", "200000")
    assert set(load_catalog(root).tasks) == {"long", "fine"}

    monkeypatch.setenv("AGENT_PIPELINES_MAX_CATALOG_FILE_BYTES", "100000")
    catalog = load_catalog(root)
    refused = [p for p in catalog.problems if p.kind == "file"]
    assert len(refused) == 1 and refused[0].file.endswith("tasks.yaml")
    assert "over the limit of 100,000" in refused[0].message and "AGENT_PIPELINES_MAX_CATALOG_FILE_BYTES" in refused[0].message


def test_cli_validate_finishes_on_a_hostile_catalog(tmp_path: Path) -> None:
    tasks = "".join(task(name, prompt) for name, (prompt, _) in HOSTILE_PROMPTS.items())
    root = write_catalog(tmp_path / "c", tasks)
    result = subprocess.run(
        [sys.executable, "-m", "agent_pipelines.cli", "validate", str(root)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert all(f"task '{name}'" in result.stdout for name in HOSTILE_PROMPTS), result.stdout


def test_the_ingress_keeps_serving_with_a_hostile_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTILE_TOKEN", "t")
    sources = "sources:\n  - {name: alerts, auth: {kind: bearer, token_env: HOSTILE_TOKEN}}\n"
    tasks = "".join(task(name, prompt) for name, (prompt, _) in HOSTILE_PROMPTS.items())
    root = write_catalog(tmp_path / "c", tasks, **{"sources.yaml": sources})
    store = StateStore(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        with serve_in_thread(create_ingress_app(CatalogSources(root, min_interval_s=0), store)) as server:
            response = httpx.post(f"{server.url}/events/alerts", json={"type": "t"}, headers={"Authorization": "Bearer t"}, timeout=30)
            assert response.status_code == 202, response.text
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        store.engine.dispose()


def test_the_code_location_loads_a_hostile_catalog(tmp_path: Path) -> None:
    tasks = "".join(task(name, prompt) for name, (prompt, _) in HOSTILE_PROMPTS.items()) + task("fine", "hello")
    root = write_catalog(tmp_path / "c", tasks)
    script = (
        "import dagster as dg\n"
        "from agent_pipelines.definitions import defs\n"
        "dg.Definitions.validate_loadable(defs)\n"
        "print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))\n"
    )
    env = {**os.environ, "AGENT_PIPELINES_CATALOG": str(root)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fine" in result.stdout and "power" not in result.stdout, result.stdout
