"""Prompt templates: Jinja2, sandboxed, strict about undefined variables.

Catalog prompts are written by many teams, so they are rendered in Jinja's sandbox, and every
name they use is checked at validation time, long before a schedule fires at 3 a.m.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

#: Names every prompt may use without declaring them (see README "Prompt templates").
BUILTIN_VARIABLES: frozenset[str] = frozenset(
    {"task", "due_time", "now", "trigger", "upstream", "event", "item", "shard"}
)

_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class TemplateProblem(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line  # line inside the template, 1-based


@dataclass(frozen=True)
class TemplateNames:
    variables: frozenset[str]  # top-level names used
    upstream: frozenset[str]  # `upstream.<task>` / `upstream['<task>']` references
    dynamic_upstream: bool  # `upstream[some_expression]`: cannot be checked statically


def analyze(source: str) -> TemplateNames:
    """Names a template uses; raises `TemplateProblem` on a syntax error."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from exc
    upstream: set[str] = set()
    dynamic = False
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "upstream"):
            continue
        if isinstance(node, nodes.Getattr):
            upstream.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            upstream.add(node.arg.value)
        else:
            dynamic = True
    return TemplateNames(
        variables=frozenset(meta.find_undeclared_variables(ast)),
        upstream=frozenset(upstream),
        dynamic_upstream=dynamic,
    )


def event_payload_fields(source: str) -> list[str]:
    """The `event.payload.<field>` names a template reads (to ask a person for a sample event)."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return []
    found: set[str] = set()
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if isinstance(inner, nodes.Getattr) and inner.attr == "payload" and isinstance(inner.node, nodes.Name) and inner.node.name == "event":
            found.add(node.attr)
    return sorted(found)


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> jinja2.Template:
    """Compiling costs far more than rendering; a batch renders one template per item."""
    return _ENV.from_string(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render strictly: an undefined name is an error, never an empty string."""
    try:
        return _compiled(source).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateProblem(f"undefined template variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}", getattr(exc, "lineno", None)) from exc
    except Exception as exc:  # noqa: BLE001 - a filter or method inside the template raised
        raise TemplateProblem(f"template failed while rendering: {exc!r}") from exc
