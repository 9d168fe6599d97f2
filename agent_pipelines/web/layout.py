"""What every `/ops/` page shares: the store of the instance, the page frame, escaping."""

from __future__ import annotations

import functools
from html import escape

from starlette.responses import HTMLResponse

from agent_pipelines.store import StateStore, url_for_instance

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2933;background:#f7f8fa}
header{background:#24292f;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#c9d1d9;text-decoration:none}header a:hover{color:#fff}
main{padding:16px 20px}table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e1e4e8;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}form{margin-bottom:12px;display:flex;flex-wrap:wrap;gap:8px}
input,select{padding:4px 6px}.denied,.failed{color:#b42318;font-weight:600}.ok,.allowed,.succeeded{color:#067647}
.muted{color:#6b7280}.mono{font-family:ui-monospace,monospace;font-size:12px}
"""


@functools.lru_cache(maxsize=1)
def page_store() -> StateStore:
    """The store of the instance in DAGSTER_HOME (the gate serves one instance)."""
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    return StateStore.for_url(url_for_instance(instance))


def page(title: str, body: str) -> HTMLResponse:
    """A page in the platform's frame; `body` must already be escaped."""
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · agent_pipelines</title><style>{_STYLE}</style></head><body>"
        "<header><strong>agent_pipelines</strong><a href='/'>Dagster UI</a>"
        "<a href='/ops/executions'>Execution records</a><a href='/ops/audit'>Audit log</a></header>"
        f"<main><h2>{escape(title)}</h2>{body}</main></body></html>"
    )


def cell(value: object, css: str = "") -> str:
    text = "" if value is None else str(value)
    return f"<td class='{escape(css)}'>{escape(text)}</td>" if css else f"<td>{escape(text)}</td>"
