"""Prompt templates: Jinja2, sandboxed and bounded, strict about undefined variables.

Catalog prompts are written by many teams, so they are rendered in Jinja's immutable sandbox
under the limits of `template_limits`, and every name they use, every attribute that would
escape the sandbox and every constant over a limit is reported at validation time, long before
a schedule fires at 3 a.m.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
)

from agent_pipelines.catalog.template_limits import (
    MAX_STEPS,
    BoundedEnvironment,
    TemplateLimit,
    bounded_range,
    check_binop,
    render_bounded,
)

#: Names every prompt may use without declaring them (see README "Prompt templates").
BUILTIN_VARIABLES: frozenset[str] = frozenset(
    {"task", "due_time", "now", "trigger", "upstream", "event", "item", "shard"}
)

_ENV = BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)

#: Attributes no template may read: the sandbox refuses them at run time, validation up front.
UNSAFE_ATTRIBUTES: frozenset[str] = frozenset(
    {"mro", *UNSAFE_FUNCTION_ATTRIBUTES, *UNSAFE_METHOD_ATTRIBUTES, *UNSAFE_GENERATOR_ATTRIBUTES,
     *UNSAFE_COROUTINE_ATTRIBUTES, *UNSAFE_ASYNC_GENERATOR_ATTRIBUTES}
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
    """Names a template uses; raises `TemplateProblem` on a syntax error, a sandbox escape or a
    constant over the limits (at the template line that holds it)."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from exc
    for problem in _unsafe_parts(ast):
        raise problem
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


def _unsafe_parts(ast: nodes.Template) -> Iterator[TemplateProblem]:
    """Sandbox escapes and statically visible costs over the limits, in source order."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.BinExpr, nodes.Call, nodes.For)):
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            name = str(node.args[0].value)
        if name is not None and (name.startswith("_") or name in UNSAFE_ATTRIBUTES):
            yield TemplateProblem(
                f"attribute {name!r} is not allowed in templates (it would reach Python internals; the sandbox refuses it)",
                node.lineno,
            )
        try:
            if isinstance(node, nodes.BinExpr) and isinstance(node.left, nodes.Const) and isinstance(node.right, nodes.Const):
                check_binop(node.operator, node.left.value, node.right.value)
            elif isinstance(node, nodes.Call):
                _constant_range(node)  # raises when over the limit
            elif isinstance(node, nodes.For):
                _check_loop_cost(node)
        except TemplateLimit as exc:
            yield TemplateProblem(f"template over a limit: {exc}", node.lineno)


def _constant_range(node: nodes.Node) -> int | None:
    """The item count of `range(<constants>)`, checked against the limit; None if not one."""
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"):
        return None
    if node.kwargs or node.dyn_args or node.dyn_kwargs or not all(isinstance(a, nodes.Const) for a in node.args):
        return None
    try:
        return len(bounded_range(*(a.value for a in node.args)))
    except (TypeError, ValueError):
        return None


def _check_loop_cost(loop: nodes.For) -> None:
    """Nested loops over constant ranges: their product of iterations must fit the step budget."""
    total, node = 1, loop
    while isinstance(node, nodes.For) and (count := _constant_range(node.iter)) is not None:
        total *= max(count, 1)
        inner = [child for child in node.body if isinstance(child, nodes.For)]
        node = inner[0] if len(inner) == 1 else None
    if total > MAX_STEPS:
        raise TemplateLimit(f"nested loops of {total:,} iterations; templates are limited to {MAX_STEPS:,} steps")


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
def _compiled(source: str) -> Callable[[dict[str, Any]], str]:
    """Compiling costs far more than rendering; a batch renders one template per item."""
    return render_bounded(_ENV, source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render strictly (an undefined name is an error, never an empty string) and within the
    limits of `template_limits`."""
    try:
        return _compiled(source)(dict(context))
    except TemplateLimit as exc:
        raise TemplateProblem(f"template over a limit: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateProblem(f"undefined template variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}", getattr(exc, "lineno", None)) from exc
    except Exception as exc:  # noqa: BLE001 - a filter or method inside the template raised
        raise TemplateProblem(f"template failed while rendering: {exc!r}") from exc
