"""A page of execution records as JSON-ready dicts and as a text table (CLI and page share them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent_pipelines.store.records import RecordPage, RecordRow


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


def record_dict(row: RecordRow) -> dict[str, Any]:
    e = row.execution
    return {
        "idempotency_key": e.idempotency_key,
        "task": e.task,
        "agent": e.agent,
        "status": e.status,
        "outcome": e.outcome,
        "trigger": e.trigger,
        "prompt_version": e.prompt_version,
        "run_id": e.run_id or None,
        "attempts": e.attempts,
        "created_at": _iso(e.created_at),
        "due_time": _iso(e.due_time),
        "sent_at": _iso(e.sent_at),
        "answered_at": _iso(e.answered_at),
        "latency_ms": e.latency_ms,
        "lateness_ms": e.lateness_ms,
        "cost": e.cost,
        "failure_kind": e.failure_kind,
        "error": e.error,
        "reason": e.reason,
        "model": row.model,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "output_preview": row.output_preview,
        "output_chars": row.output_chars,
    }


def page_dict(page: RecordPage) -> dict[str, Any]:
    return {"executions": [record_dict(row) for row in page.rows], "next_cursor": page.next_cursor}


def one_line(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _ms(value: float | None) -> str:
    return f"{value:.0f}ms" if value is not None else "-"


def table_rows(page: RecordPage, output_width: int = 48) -> list[tuple[str, ...]]:
    """Header first; one line per execution (the full record: `executions show KEY`)."""
    rows: list[tuple[str, ...]] = [
        ("CREATED", "STATUS", "TASK", "AGENT", "TRIGGER", "DUE", "LATE", "LATENCY", "VERSION", "COST", "KEY", "OUTPUT / ERROR")
    ]
    for row in page.rows:
        e = row.execution
        rows.append(
            (
                _iso(e.created_at) or "-",
                e.status,
                e.task,
                e.agent,
                e.trigger,
                _iso(e.due_time) or "-",
                _ms(e.lateness_ms),
                _ms(e.latency_ms),
                e.prompt_version or "-",
                f"{e.cost:.4f}" if e.cost is not None else "-",
                e.idempotency_key,
                one_line(row.output_preview if row.output_preview is not None else e.error, output_width) or "-",
            )
        )
    return rows
