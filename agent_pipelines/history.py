"""Execution records as text, for `agent-pipelines task history` and `executions show`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from agent_pipelines.store import Execution, ResultRecord


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else "-"


def moment(execution: Execution) -> str:
    """When it was due; for event and manual executions, when it was triggered."""
    return _when(execution.due_time or execution.created_at)


def history_lines(executions: Iterable[Execution]) -> Iterator[str]:
    yield f"{'DUE / TRIGGERED':<24}  {'TRIGGER':<8}  {'STATUS':<9}  ATT  {'LATENESS':>9}  {'LATENCY':>9}  KEY / WHY"
    for e in executions:
        lateness = f"{e.lateness_ms:.1f}ms" if e.lateness_ms is not None else "-"
        latency = f"{e.latency_ms:.0f}ms" if e.latency_ms is not None else "-"
        line = f"{moment(e):<24}  {e.trigger:<8}  {e.status:<9}  {e.attempts:>3}  {lateness:>9}  {latency:>9}  {e.idempotency_key}"
        why = "; ".join(part for part in (e.error, e.reason) if part)
        if e.outcome == "unknown" and e.status != "unknown":
            why = f"outcome unknown: {why}"
        yield line + (f"\n{'':>72}{why}" if why else "")


def execution_text(execution: Execution, result: ResultRecord | None) -> str:
    lines = [
        f"execution  {execution.idempotency_key}",
        f"task       {execution.task} (agent {execution.agent}, prompt version {execution.prompt_version or '-'})",
        f"trigger    {execution.trigger}, due/triggered {moment(execution)}",
        f"status     {execution.status}" + (f" (outcome {execution.outcome})" if execution.outcome else ""),
        f"attempts   {execution.attempts}, run {execution.run_id or '-'}",
        f"sent       {_when(execution.sent_at)}" + (f", {execution.lateness_ms:.1f} ms after due" if execution.lateness_ms is not None else ""),
        f"answered   {_when(execution.answered_at)}" + (f" ({execution.latency_ms:.0f} ms)" if execution.latency_ms is not None else ""),
    ]
    if execution.failure_kind or execution.error:
        lines.append(f"error      {execution.failure_kind or '-'}: {execution.error or ''}")
    if execution.reason:
        lines.append(f"why        {execution.reason}")
    if execution.next_attempt_at:
        lines.append(f"next try   {_when(execution.next_attempt_at)}")
    if execution.upstream:
        lines.append("upstream   " + ", ".join(f"{task}: {key}" for task, key in execution.upstream.items()))
    if result is not None:
        tokens = f"{result.tokens_in or 0} in / {result.tokens_out or 0} out"
        lines += [f"model      {result.model or '-'}, session {result.session_id or '-'}, tokens {tokens}", ""]
        if result.system:
            lines += ["--- system ---", result.system]
        lines += ["--- prompt ---", result.prompt or "", "--- output ---", result.output if result.output is not None else "(none)"]
    return "\n".join(lines)
