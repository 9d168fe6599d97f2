"""`/ops/audit`: the audit log in the browser, filterable, newest first, with the chain's state."""

from __future__ import annotations

import datetime as dt

from html import escape
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agent_pipelines.records.filters import parse_moment
from agent_pipelines.web.layout import cell, page, page_store

_FILTERS = ("actor", "action", "target", "outcome", "since")
_PAGE_SIZE = 100


def routes() -> list[BaseRoute]:
    return [Route("/ops/audit", audit_html), Route("/ops/audit.json", audit_json)]


def _entries(request: Request) -> tuple[list, dict[str, str]]:
    params = {name: request.query_params.get(name, "").strip() for name in _FILTERS}
    before = request.query_params.get("before")
    entries = page_store().audit_entries(
        actor=params["actor"] or None,
        action=params["action"] or None,
        target=params["target"] or None,
        outcome=params["outcome"] or None,
        since=parse_moment(params["since"], dt.datetime.now(dt.timezone.utc)) if params["since"] else None,
        before_seq=int(before) if before and before.isdigit() else None,
        limit=_PAGE_SIZE,
    )
    return entries, params


async def audit_json(request: Request) -> Response:
    try:
        entries, _ = _entries(request)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    more = entries[-1].seq if len(entries) == _PAGE_SIZE else None
    return JSONResponse({"entries": [entry.as_json() for entry in entries], "next_before": more})


async def audit_html(request: Request) -> Response:
    try:
        entries, params = _entries(request)
    except ValueError as exc:
        return page("Audit log", f"<p class='denied'>{escape(str(exc))}</p>")
    check = page_store().verify_audit()
    chain = (
        f"<p class='ok'>Hash chain intact: {check.entries} entries, head <span class='mono'>{escape(check.head_hash[:16])}…</span></p>"
        if check.intact
        else f"<p class='denied'>Hash chain BROKEN at entry {check.broken_at}: {escape(check.problem or '')}</p>"
    )
    form = "<form method='get'>" + "".join(
        f"<input name='{name}' placeholder='{name}' value='{escape(value)}'>" for name, value in params.items()
    ) + "<button type='submit'>Filter</button></form>"
    header = "<tr><th>#</th><th>When (UTC)</th><th>Actor</th><th>Via</th><th>From</th><th>Action</th><th>Target</th><th>Outcome</th><th>Details</th></tr>"
    rows = "".join(
        "<tr>" + cell(e.seq) + cell(e.at.strftime("%Y-%m-%d %H:%M:%S")) + cell(e.actor) + cell(e.via) + cell(e.origin)
        + cell(e.action) + cell(e.target) + cell(e.outcome, e.outcome) + cell(_details(e.details), "mono") + "</tr>"
        for e in entries
    )
    empty = "" if entries else "<p class='muted'>No audit entries match.</p>"
    more = ""
    if len(entries) == _PAGE_SIZE:
        query = urlencode({**{k: v for k, v in params.items() if v}, "before": entries[-1].seq})
        more = f"<p><a href='/ops/audit?{escape(query)}'>Older entries →</a></p>"
    return page("Audit log", chain + form + f"<table>{header}{rows}</table>" + empty + more)


def _details(details: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(details.items()))
