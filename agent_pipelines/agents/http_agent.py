"""Home-grown HTTP agents, described by a body template and paths into the JSON answer.

The body is any JSON-able structure whose string leaves are Jinja2 templates; the answer is
read with dotted paths (`data.choices.0.text`). That covers most in-house agents without code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jinja2

from agent_pipelines.agents.base import (
    AgentCallError,
    AgentClient,
    AgentRequest,
    AgentResponse,
    AgentSettings,
    FailureKind,
)
from agent_pipelines.catalog.template_limits import BoundedEnvironment, render_bounded

DEFAULT_BODY: dict[str, Any] = {"prompt": "{{ prompt }}"}
MISSING = object()

# A leaf that is exactly one `{{ expression }}` keeps the expression's native JSON type.
_SINGLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%|\{#).)*)\}\}$", re.DOTALL)

_ENV = BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)

Renderer = Callable[[Mapping[str, Any]], Any]


class HttpAgentClient(AgentClient):
    """POST a rendered body to `{base_url}{path}` and read the output at `output_path`."""

    kind: ClassVar[str] = "http"
    default_base_url: ClassVar[str | None] = None
    default_model: ClassVar[str | None] = None

    def __init__(self, settings: AgentSettings, http: Any) -> None:
        super().__init__(settings, http)
        self._renderer: Renderer | None = None

    def url(self) -> str:
        path = str(self.settings.options.get("path", "/"))
        return f"{self.settings.base_url.rstrip('/')}{path}"

    def template_context(self, request: AgentRequest) -> dict[str, Any]:
        return {
            "prompt": request.prompt,
            "system": request.system,
            "task": request.task,
            "idempotency_key": request.idempotency_key,
            "session_key": request.session.key,
            "session_id": request.session.remote_id,
            "session_mode": request.session.mode,
            "model": self.settings.model,
            "variables": dict(request.variables),
        }

    def render_body(self, request: AgentRequest) -> Any:
        """The request body, or a CONFIG error: a bad template must not reach the agent."""
        try:
            if self._renderer is None:
                self._renderer = compile_template(self.settings.options.get("body", DEFAULT_BODY))
            body = self._renderer(self.template_context(request))
            json.dumps(body)
        except Exception as exc:  # any error while rendering is in the template, i.e. config
            raise AgentCallError(
                FailureKind.CONFIG,
                f"agent {self.settings.name!r}: cannot render the body template: {exc}",
            ) from exc
        return body

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        body = self.render_body(request)
        response, payload, latency_ms = await self.post_json(
            self.url(), body, request, self.base_headers(request)
        )
        options = self.settings.options
        output_path = str(options.get("output_path", "output"))
        output = lookup(payload, output_path)
        if output is MISSING or output is None:
            raise AgentCallError(
                FailureKind.MALFORMED,
                f"answer has nothing at output_path {output_path!r}: "
                f"{json.dumps(payload, default=str)[:200]}",
                status_code=response.status_code,
            )
        session_id = optional_lookup(payload, options.get("session_id_path"))
        return AgentResponse(
            output=output if isinstance(output, str) else json.dumps(output, ensure_ascii=False),
            latency_ms=latency_ms,
            tokens_in=as_int(optional_lookup(payload, options.get("tokens_in_path"))),
            tokens_out=as_int(optional_lookup(payload, options.get("tokens_out_path"))),
            session_id=None if session_id is None else str(session_id),
            model=self.settings.model,
            metadata={"http_status": response.status_code},
        )


def compile_template(template: Any) -> Renderer:
    """Compile every string leaf once; the result renders the whole structure from a context."""
    if isinstance(template, str):
        return compile_leaf(template)
    if isinstance(template, Mapping):
        items = [(str(key), compile_template(value)) for key, value in template.items()]
        return lambda ctx: {key: render(ctx) for key, render in items}
    if isinstance(template, (list, tuple)):
        parts = [compile_template(value) for value in template]
        return lambda ctx: [render(ctx) for render in parts]
    if template is None or isinstance(template, (bool, int, float)):
        return lambda ctx: template
    raise TypeError(f"body template has a {type(template).__name__}, which is not JSON")


def compile_leaf(text: str) -> Renderer:
    match = _SINGLE_EXPRESSION.match(text.strip())
    if match:
        expression = _ENV.compile_expression(match.group("expr"), undefined_to_none=False)

        def render_native(ctx: Mapping[str, Any]) -> Any:
            value = expression(**ctx)  # an expression has no loops: each part runs once
            if isinstance(value, jinja2.Undefined):
                str(value)  # StrictUndefined raises UndefinedError naming the variable
            return str(value) if isinstance(value, str) else value  # Markup -> plain str

        return render_native
    render = render_bounded(_ENV, text)
    return lambda ctx: render(dict(ctx))


def lookup(payload: Any, path: str) -> Any:
    """Follow a dotted path with integer list indexes; MISSING when any step is absent."""
    current = payload
    for part in [p for p in path.split(".") if p]:
        if isinstance(current, Mapping):
            current = current.get(part, MISSING)
        elif isinstance(current, list) and re.fullmatch(r"-?\d+", part):
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else MISSING
        else:
            return MISSING
        if current is MISSING:
            return MISSING
    return current


def optional_lookup(payload: Any, path: Any) -> Any:
    if not path:
        return None
    value = lookup(payload, str(path))
    return None if value is MISSING else value


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
