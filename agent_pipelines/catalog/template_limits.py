"""Bounds on what a catalog template may cost: it renders inside the code location, the runs and
the ingress's catalog reloads, so one hostile prompt must never hang or exhaust them.

Jinja's sandbox stops escapes to Python internals but not cost: `{{ 7 ** 99999999 }}` spins in
C for minutes (and Jinja even folds it while compiling), `{{ 'x' * 300000000 }}` allocates
300 MB, and three nested loops over `range(100000)` never end. So here:

- operations that can grow a value far beyond their inputs (`*`, `**`, `%`, `+`, `~`, padding
  and replacing methods and filters) are checked *before* they run: no value over
  `MAX_VALUE_CHARS` characters or `MAX_INT_BITS` bits is ever built;
- `range()` yields at most `MAX_RANGE` items; lists, dicts and sets cannot be mutated;
- each render has a budget of steps and of wall time: every loop iteration and macro call
  (the only template code that runs more than once) spends a step, compiled into the template;
- the rendered text may not exceed `MAX_OUTPUT_CHARS`.
"""

from __future__ import annotations

import re
import string
import time
from contextvars import ContextVar
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame
from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent_pipelines.catalog.template_substitution import substitution

T = TypeVar("T")

MAX_VALUE_CHARS = 1_000_000
MAX_OUTPUT_CHARS = 1_000_000
MAX_INT_BITS = 100_000
MAX_RANGE = 10_000
MAX_WIDTH = 10_000
MAX_STEPS = 200_000
MAX_SECONDS = 2.0

_SEQUENCES = (str, bytes, list, tuple)
# width and precision of `%5d`, `%(name)-*.3s`, and of a `{:>9.2}` format spec
_PERCENT_WIDTHS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_SPEC_WIDTHS = re.compile(r"^(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d*))?")


class TemplateLimit(Exception):
    """A template asked for more than the limits allow; the message says which limit."""


def _size(value: Any) -> int:
    if isinstance(value, _SEQUENCES):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1  # about its decimal digits
    return len(str(value)) if isinstance(value, float) else 0


def _check_size(chars: int, what: str) -> None:
    if chars > MAX_VALUE_CHARS:
        raise TemplateLimit(f"{what} would be {chars:,} characters long; templates are limited to {MAX_VALUE_CHARS:,}")


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_WIDTH:
        raise TemplateLimit(f"{what} asks for width {width:,}; templates are limited to {MAX_WIDTH:,}")


def _brace_widths(fmt: str) -> list[tuple[str, str]]:
    found = []
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return []  # str.format will refuse it itself
    for _literal, _field, spec, _conversion in fields:
        if spec:
            if "{" in spec:
                raise TemplateLimit("format specs with nested fields are not allowed in templates")
            match = _SPEC_WIDTHS.match(spec)
            if match:
                found.append((match.group(1) or "", match.group(2) or ""))
    return found


def _check_format_string(fmt: str, style: str) -> None:
    found = _PERCENT_WIDTHS.findall(fmt) if style == "%" else _brace_widths(fmt)
    for width, precision in found:
        for number in (width, precision):
            if number == "*":
                raise TemplateLimit("format strings with `*` widths are not allowed in templates")
            if number:
                _check_width(int(number), "a format string")


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a binary operation whose result would exceed the limits."""
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            bits = abs(left).bit_length() * right
            if bits > MAX_INT_BITS:
                raise TemplateLimit(f"{left} ** {right} would have about {bits:,} bits; templates are limited to {MAX_INT_BITS:,}")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, _SEQUENCES):
            left, right = right, left
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            _check_size(len(left) * max(right, 0), "a repeated sequence")
        elif isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"a product would exceed {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            _check_size(len(left) + len(right), "a concatenation")
    elif operator == "%" and isinstance(left, str):
        _check_format_string(left, "%")
        args = right if isinstance(right, tuple) else (right,)
        _check_size(len(left) + sum(_size(a) for a in args), "a formatted string")


def check_concat(values: Iterable[Any]) -> None:
    _check_size(sum(_size(v) if isinstance(v, (str, int, float)) else 0 for v in values), "a `~` concatenation")


_STR_PADDING = {"ljust", "rjust", "center", "zfill"}


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse calls of string methods that could build values over the limits."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _STR_PADDING and args:
        _check_width(args[0], f"str.{name}")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_size(len(owner) + owner.count("\t") * max(tabsize, 0), "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        _check_size(len(owner) + count * len(args[1]), "str.replace")
    elif name in ("format", "format_map"):
        _check_format_string(owner, "{}")
        values = list(args) + list(kwargs.values())
        _check_size(len(owner) + sum(_size(v) for v in values), "str.format")
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        _check_size(sum(_size(v) for v in args[0]) + len(owner) * len(args[0]), "str.join")


def bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimit(f"range() of {len(numbers):,} items; templates are limited to {MAX_RANGE:,}")
    return numbers


def _bounded_filter(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    original = jinja_filters.FILTERS[name]

    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    bounded.__name__ = original.__name__
    for flag in ("jinja_pass_arg",):  # pass_context / pass_eval_context markers
        if hasattr(original, flag):
            setattr(bounded, flag, getattr(original, flag))
    return bounded


def _center(value: Any, width: int = 80) -> None:
    _check_width(width, "the center filter")


def _indent(*args: Any, **kwargs: Any) -> None:
    value = args[0] if args else ""
    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
    pad = width if isinstance(width, int) else len(str(width))
    _check_width(pad, "the indent filter")
    _check_size(len(str(value)) + (str(value).count("\n") + 1) * pad, "the indent filter")


def _wordwrap(*args: Any, **kwargs: Any) -> None:
    # (eval_ctx, s, width, ...): padding cannot grow, but a tiny width splits into many lines
    value = args[1] if len(args) > 1 else ""
    _check_size(len(str(value)) * 2, "the wordwrap filter")


def _replace(*args: Any, **kwargs: Any) -> None:
    # (eval_ctx, s, old, new, count=None)
    if len(args) >= 4:
        s, old, new = str(args[1]), str(args[2]), str(args[3])
        count = s.count(old) if old else len(s) + 1
        _check_size(len(s) + count * len(new), "the replace filter")


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    fmt = str(value)
    _check_format_string(fmt, "%")
    _check_size(len(fmt) + sum(_size(a) for a in (*args, *kwargs.values())), "the format filter")


def _join(*args: Any, **kwargs: Any) -> None:
    # (eval_ctx, value, d='', attribute=None)
    value = args[1] if len(args) > 1 else ()
    separator = args[2] if len(args) > 2 else kwargs.get("d", "")
    if isinstance(value, (list, tuple)):
        _check_size(sum(_size(v) for v in value) + len(str(separator)) * len(value), "the join filter")


_BOUNDED_FILTERS = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "replace": _replace,
    "format": _format,
    "join": _join,
}


def _add_ticks(ast: nodes.Template) -> nodes.Template:
    """A step first in every loop body and macro body, the code that can run more than once.

    Jinja forbids new node types, so the step is the statement `environment.budget_step`: an
    attribute read that spends one step (a property), with no sandboxed call on the way.
    """
    for node in ast.find_all((nodes.For, nodes.Macro, nodes.CallBlock)):
        node.body.insert(0, nodes.ExprStmt(nodes.EnvironmentAttribute("budget_step"), lineno=node.lineno))
    return ast


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b` compiles to a plain join that the sandbox never sees: route it through a check.
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the checks above; no `lipsum`, `cycler` or `joiner`."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals["range"] = bounded_range
        for name in ("lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)
        for name, check in _BOUNDED_FILTERS.items():
            self.filters[name] = _bounded_filter(name, check)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _add_ticks(super()._parse(source, name, filename))

    @property
    def budget_step(self) -> None:
        budget = _CURRENT_BUDGET.get()
        if budget is not None:
            budget.tick()

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        check_concat(values)
        return "".join(str(v) for v in values)


class StepBudget:
    """The steps (loop iterations and macro calls) and wall time one render may use."""

    def __init__(self, steps: int | None = None, seconds: float | None = None) -> None:
        self.steps = steps = MAX_STEPS if steps is None else steps  # read per render, not at import
        self.left = steps
        self.seconds = seconds = MAX_SECONDS if seconds is None else seconds
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        self.left -= 1
        if self.left <= 0:
            raise TemplateLimit(f"the template ran more than {self.steps:,} steps (loop iterations and macro calls)")
        if self.left % 1024 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimit(f"the template ran longer than {self.seconds:g} s")


_CURRENT_BUDGET: ContextVar[StepBudget | None] = ContextVar("template_budget", default=None)


def collect(chunks: Iterable[str], limit: int = MAX_OUTPUT_CHARS) -> str:
    """A template's `generate()` output, refused past `limit` characters."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TemplateLimit(f"the rendered text exceeds {limit:,} characters")
        out.append(chunk)
    return "".join(out)


def render_bounded(env: BoundedEnvironment, source: str) -> Callable[[dict[str, Any]], str]:
    """Compile `source` once; the result renders a context within the limits. A template that
    only substitutes values needs no step budget, only the output limit (see
    `template_substitution`)."""
    substitute = substitution(env, env.parse(source))
    if substitute is not None:
        return lambda context: collect((substitute(context),))
    template = env.from_string(source)

    def render(context: dict[str, Any]) -> str:
        token = _CURRENT_BUDGET.set(StepBudget())
        try:
            return collect(template.generate(**context))
        finally:
            _CURRENT_BUDGET.reset(token)

    return render
