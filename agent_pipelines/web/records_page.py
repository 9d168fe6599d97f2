"""`/ops/executions`: execution records in the browser, the same filters and pages as
`agent-pipelines executions list` (`/ops/executions.json` for scripts).

Endpoints are plain functions: Starlette runs them in its thread pool, so a slow query never
stalls the gate's event loop (which also proxies the Dagster UI).
"""

from __future__ import annotations

import datetime as dt
import functools
from html import escape
from pathlib import Path
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agent_pipelines.catalog.loader import (
    Catalog,
    catalog_files,
    default_catalog_path,
    load_catalog,
)
from agent_pipelines.records.filters import STATUSES, TRIGGERS, build_filter
from agent_pipelines.records.render import page_dict, record_dict
from agent_pipelines.store.records import MAX_PAGE, BadCursor, RecordPage
from agent_pipelines.web.layout import cell, page, page_store

_FILTERS = ("task", "owner", "agent", "status", "trigger", "prompt_version", "since", "until", "text")
_DEFAULT_LIMIT = 50


def routes() -> list[BaseRoute]:
    return [Route("/ops/executions", records_html), Route("/ops/executions.json", records_json)]


@functools.lru_cache(maxsize=4)
def _catalog_at(path: str, mtimes: tuple[float, ...]) -> Catalog:
    return load_catalog(Path(path))


def _catalog() -> Catalog:
    """The catalog, read again only when one of its files changed (owner -> tasks)."""
    root = default_catalog_path()
    files = catalog_files(root) if root.exists() else []
    return _catalog_at(str(root), tuple(f.stat().st_mtime for f in files))


def _params(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in _FILTERS}


def _search(request: Request) -> tuple[RecordPage, dict[str, str], int, bool]:
    """Raises ValueError (shown as a 400) for a filter or cursor that cannot be used."""
    params = _params(request)
    try:
        limit = int(request.query_params.get("limit") or _DEFAULT_LIMIT)
    except ValueError:
        raise ValueError("limit must be a number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    archived = request.query_params.get("archived") in ("1", "true", "on")
    wanted = build_filter(
        now=dt.datetime.now(dt.timezone.utc),
        catalog=_catalog() if params["owner"] else None,
        tasks=[params["task"]] if params["task"] else [],
        owners=[params["owner"]] if params["owner"] else [],
        agents=[params["agent"]] if params["agent"] else [],
        statuses=[params["status"]] if params["status"] else [],
        triggers=[params["trigger"]] if params["trigger"] else [],
        prompt_versions=[params["prompt_version"]] if params["prompt_version"] else [],
        since=params["since"] or None,
        until=params["until"] or None,
        text=params["text"] or None,
    )
    cursor = request.query_params.get("cursor") or None
    found = page_store().search_executions(wanted, limit=limit, cursor=cursor, archived=archived)
    return found, params, limit, archived


def records_json(request: Request) -> Response:
    try:
        found, _, _, _ = _search(request)
    except (ValueError, BadCursor) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(page_dict(found))


def _form(params: dict[str, str], limit: int, archived: bool) -> str:
    def text_input(name: str, hint: str) -> str:
        return f"<input name='{name}' placeholder='{escape(hint)}' title='{escape(hint)}' value='{escape(params[name])}'>"

    def choice(name: str, options: tuple[str, ...]) -> str:
        chosen = params[name]
        items = "".join(
            f"<option value='{escape(o)}'{' selected' if o == chosen else ''}>{escape(o or f'any {name}')}</option>"
            for o in ("", *options)
        )
        return f"<select name='{name}'>{items}</select>"

    return (
        "<form method='get'>"
        + text_input("task", "task or glob: daily_*")
        + text_input("owner", "owner: ops")
        + text_input("agent", "agent")
        + choice("status", STATUSES)
        + choice("trigger", TRIGGERS)
        + text_input("prompt_version", "prompt version")
        + text_input("since", "since: 2h, 7d, 2026-01-31")
        + text_input("until", "until")
        + text_input("text", "text in output or error")
        + f"<input name='limit' size='4' value='{limit}' title='rows per page'>"
        + f"<label><input type='checkbox' name='archived' value='1'{' checked' if archived else ''}> archived</label>"
        + "<button type='submit'>Search</button></form>"
    )


_HEADER = (
    "<tr><th>Created (UTC)</th><th>Status</th><th>Task</th><th>Agent</th><th>Trigger</th><th>Due</th>"
    "<th>Sent</th><th>Latency</th><th>Lateness</th><th>Prompt version</th><th>Cost</th><th>Run</th>"
    "<th>Output / error</th><th>Key</th></tr>"
)


def _time(value: str | None) -> str:
    return value.replace("T", " ").removesuffix("Z") if value else ""


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else ""


def _row(record: dict) -> str:
    run = record["run_id"]
    run_link = f"<td><a class='mono' href='/runs/{escape(quote(run, safe=''))}'>{escape(run[:8])}</a></td>" if run else "<td></td>"
    preview = record["output_preview"] if record["output_preview"] is not None else record["error"]
    more = record["output_chars"] and record["output_preview"] and record["output_chars"] > len(record["output_preview"])
    return (
        "<tr>"
        + cell(_time(record["created_at"]))
        + cell(record["status"], record["status"])
        + cell(record["task"])
        + cell(record["agent"])
        + cell(record["trigger"])
        + cell(_time(record["due_time"]))
        + cell(_time(record["sent_at"]))
        + cell(_ms(record["latency_ms"]))
        + cell(_ms(record["lateness_ms"]))
        + cell(record["prompt_version"], "mono")
        + cell(f"{record['cost']:.4f}" if record["cost"] is not None else "")
        + run_link
        + cell((preview or "") + ("…" if more else ""), "mono")
        + cell(record["idempotency_key"], "mono muted")
        + "</tr>"
    )


def records_html(request: Request) -> Response:
    params = _params(request)
    try:
        found, params, limit, archived = _search(request)
    except (ValueError, BadCursor) as exc:
        body = _form(params, _DEFAULT_LIMIT, False) + f"<p class='failed'>{escape(str(exc))}</p>"
        response = page("Execution records", body)
        response.status_code = 400
        return response
    rows = "".join(_row(record_dict(row)) for row in found.rows)
    empty = "" if found.rows else "<p class='muted'>No executions match.</p>"
    more = ""
    if found.next_cursor:
        query = {k: v for k, v in params.items() if v} | {"limit": str(limit), "cursor": found.next_cursor}
        if archived:
            query["archived"] = "1"
        more = f"<p><a href='/ops/executions?{escape(urlencode(query))}'>Next page →</a></p>"
    note = "<p class='muted'>Full prompt and output: <span class='mono'>agent-pipelines executions show KEY</span>.</p>"
    return page("Execution records" + (" (archive)" if archived else ""), _form(params, limit, archived) + f"<table>{_HEADER}{rows}</table>" + empty + more + note)

