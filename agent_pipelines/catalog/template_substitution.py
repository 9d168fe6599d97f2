"""Templates that only substitute values render without Jinja's runtime.

Most prompts are text with a few `{{ item.subject }}` or `{{ event.payload["id"] }}` in it, and
a batch renders one per item: a million renders. Jinja's compiled template spends most of its
~25 us per render building a context and a generator; a template that is only text and
name/attribute/constant-key lookups is rendered here by walking those lookups directly, through
the same sandboxed `getattr`/`getitem` and the same strict undefined, in ~3 us. Anything else
(filters, tests, loops, calls, expressions) gets `None` and goes to Jinja as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Environment, nodes

#: A lookup after the name: ("attr", name) for `.name`, ("item", key) for `[constant]`.
Step = tuple[str, Any]
#: Literal text, or a name and the lookups applied to it.
Part = str | tuple[str, tuple[Step, ...]]


def lookup_path(node: nodes.Node) -> tuple[str, tuple[Step, ...]] | None:
    """`item.a["b"].c` as ("item", (("attr", "a"), ("item", "b"), ("attr", "c"))); None when
    the expression is anything else."""
    steps: list[Step] = []
    while True:
        if isinstance(node, nodes.Name):
            return node.name, tuple(reversed(steps))
        if isinstance(node, nodes.Getattr):
            steps.append(("attr", node.attr))
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            steps.append(("item", node.arg.value))
        else:
            return None
        node = node.node


def substitution(env: Environment, ast: nodes.Template) -> Callable[[Mapping[str, Any]], str] | None:
    """A renderer equivalent to the template's, when it only substitutes values; else None.
    It raises what Jinja would (`UndefinedError` for an undefined value, the sandbox's
    `SecurityError`); the caller bounds the output's size."""
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    parts: list[Part] = []
    for node in ast.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        path = lookup_path(node)
        if path is None:
            return None
        parts.append(path)
    getattr_, getitem, globals_, undefined = env.getattr, env.getitem, env.globals, env.undefined

    def render(context: Mapping[str, Any]) -> str:
        out: list[str] = []
        for part in parts:
            if type(part) is str:
                out.append(part)
                continue
            name, steps = part
            if name in context:
                value = context[name]
            elif name in globals_:
                value = globals_[name]
            else:
                value = undefined(name=name)
            for kind, key in steps:
                value = getattr_(value, key) if kind == "attr" else getitem(value, key)
            out.append(str(value))  # Jinja's output without autoescape; a strict Undefined raises here
        return "".join(out)

    return render
