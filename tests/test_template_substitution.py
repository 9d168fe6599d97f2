"""Substitution-only templates render without Jinja's runtime: same text, same errors."""

from __future__ import annotations

import jinja2
import pytest

from agent_pipelines.catalog.template_substitution import substitution
from agent_pipelines.catalog.templates import _ENV, TemplateProblem, render

CONTEXT = {
    "item": {"ticket_id": "T1", "subject": "printer jam", "n": None, "keys": 3, "nested": {"a": [1, 2]}},
    "shard": "s1",
    "event": {"payload": {"id": 7, "title": "Ünïcode"}},
}

SUBSTITUTIONS = [
    "Classify {{ item.subject }}",
    "{{ item['subject'] }}/{{ item.n }}/{{ shard }}\n",
    "{{ event.payload.id }}: {{ event.payload['title'] }}",
    "{{ item.keys }}",  # a dict's method wins over its key, as in Jinja
    "{{ item.nested.a }}",
    "no substitution at all",
    "{{ item.missing }}",
    "{{ nope }}",
    "{{ item.n.x }}",
    "{{ item.__class__ }}",
    "{{ item.subject.upper }}",
]


def jinja(source: str) -> str:
    return _ENV.from_string(source).render(**CONTEXT)


def outcome(render_fn) -> tuple[str, str]:
    try:
        return "ok", render_fn()
    except (jinja2.UndefinedError, jinja2.exceptions.SecurityError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("source", SUBSTITUTIONS)
def test_renders_what_jinja_renders(source: str) -> None:
    fast = substitution(_ENV, _ENV.parse(source))
    assert fast is not None
    assert outcome(lambda: fast(CONTEXT)) == outcome(lambda: jinja(source))


@pytest.mark.parametrize(
    "source",
    ["{{ item.subject | upper }}", "{% if shard %}x{% endif %}", "{{ item[shard] }}", "{{ 'a' ~ shard }}", "{{ item.subject() }}", "{% for x in range(2) %}{{ x }}{% endfor %}"],
)
def test_everything_else_goes_to_jinja(source: str) -> None:
    assert substitution(_ENV, _ENV.parse(source)) is None


def test_the_output_limit_still_holds() -> None:
    with pytest.raises(TemplateProblem, match="exceeds"):
        render("{{ item.subject }}", {"item": {"subject": "x" * 2_000_000}})
