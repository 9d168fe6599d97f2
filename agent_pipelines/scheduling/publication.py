"""What Dagster shows of an execution: a materialization of the task's asset for each output,
and an evaluation of each of its checks.

The full prompt and output stay in the store; metadata carries a preview, the execution key to
look the rest up (`agent-pipelines executions show <key>`), and the figures. Every task has the
built-in check `succeeded`: its latest evaluation says whether the task's latest execution
succeeded, and why not, so a failing task shows on its own asset instead of turning whole runs red.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.prompts.checks import CheckOutcome
from agent_pipelines.scheduling.work import Finished
from agent_pipelines.store import AgentHealth, Execution, ResultRecord, status

#: The built-in check every task asset carries.
SUCCEEDED_CHECK = "succeeded"
#: Every agent is an asset `agents/<name>` whose check `healthy` says whether it is used.
AGENT_KEY_PREFIX = "agents"
#: Every fleet is an asset `fleets/<name>` carrying its nodes' load (its nodes have no asset).
FLEET_KEY_PREFIX = "fleets"
HEALTHY_CHECK = "healthy"
PREVIEW_CHARS = 4000
PROMPT_PREVIEW_CHARS = 2000
#: A link template for an execution's trace in the user's tracing UI.
TRACE_URL_ENV = "AGENT_PIPELINES_TRACE_URL"

DagsterEvent = dg.AssetMaterialization | dg.AssetCheckEvaluation


@dataclass(frozen=True)
class Publication:
    """Dagster events of one execution (or of its late checks), and the key they came from."""

    key: str
    task: str
    events: Sequence[DagsterEvent] = field(default_factory=tuple)


def preview(text: str, limit: int, key: str) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n\n… ({len(text)} characters in all: `agent-pipelines executions show {key}`)"


def execution_tags(catalog: Catalog, finished: Finished) -> dict[str, str]:
    task = finished.item.task
    values = {
        tags.TASK: task.name,
        tags.AGENT: task.agent or "",
        tags.OWNER: tags.owner_label(task.owner),
        tags.PROMPT_VERSION: finished.version or catalog.prompt_versions[task.name],
        tags.TRIGGER: finished.item.trigger.kind,
    }
    if finished.item.trigger.due_time is not None:
        values[tags.DUE_TIME] = tags.strict_due(finished.item.trigger.due_time)
    attempt = finished.attempt
    if attempt is not None and attempt.lateness_ms is not None:
        values[tags.LATENESS_MS] = f"{attempt.lateness_ms:.3f}"
    return tags.strict_tags(values)


def materialization(catalog: Catalog, finished: Finished, run_id: str) -> dg.AssetMaterialization:
    attempt = finished.attempt
    assert attempt is not None and attempt.response is not None
    response, request, item = attempt.response, attempt.request, finished.item
    agent = catalog.agents[item.task.agent]  # type: ignore[index]
    metadata: dict[str, Any] = {
        "output": dg.MetadataValue.md(preview(response.output, PREVIEW_CHARS, item.key)),
        "prompt": dg.MetadataValue.md(f"```text\n{preview(request.prompt, PROMPT_PREVIEW_CHARS, item.key)}\n```"),
        "prompt_version": dg.MetadataValue.text(attempt.version),
        "agent": dg.MetadataValue.text(agent.name),
        "model": dg.MetadataValue.text(response.model or agent.model or "default"),
        "latency_ms": dg.MetadataValue.float(round(response.latency_ms, 3)),
        "session_id": dg.MetadataValue.text(response.session_id or request.session.key),
        "attempts": dg.MetadataValue.int(attempt.number),
        "idempotency_key": dg.MetadataValue.text(item.key),
        "trigger": dg.MetadataValue.text(item.trigger.kind),
        "output_chars": dg.MetadataValue.int(len(response.output)),
        "response": dg.MetadataValue.json(dict(response.metadata)),
    }
    if run_id:
        metadata["run"] = dg.MetadataValue.dagster_run(run_id)
    if response.tokens_in is not None:
        metadata["tokens_in"] = dg.MetadataValue.int(response.tokens_in)
    if response.tokens_out is not None:
        metadata["tokens_out"] = dg.MetadataValue.int(response.tokens_out)
    cost = agent.token_cost(response.model, response.tokens_in, response.tokens_out)
    if cost is not None:
        metadata["cost"] = dg.MetadataValue.float(round(cost, 6))  # plotted per task over time in the UI
    if item.due_time is not None:
        metadata["due_time"] = dg.MetadataValue.timestamp(item.due_time)
    if attempt.sent_at is not None:
        metadata["sent_at"] = dg.MetadataValue.timestamp(attempt.sent_at)
    if attempt.lateness_ms is not None:
        metadata["lateness_ms"] = dg.MetadataValue.float(round(attempt.lateness_ms, 3))
    if item.event is not None:
        metadata["event_id"] = dg.MetadataValue.text(item.event.event_id)
    if attempt.upstream:
        metadata["upstream"] = dg.MetadataValue.json(dict(attempt.upstream))
    if attempt.canary:
        metadata["canary"] = dg.MetadataValue.bool(True)
    metadata.update(trace_metadata(finished.trace_id))
    event_tags = execution_tags(catalog, finished)
    # The definition's code version (the catalog's prompt), so Dagster never calls an output
    # made by a registry or canary version stale; that version is in `prompt_version`.
    event_tags["dagster/code_version"] = catalog.prompt_versions[item.task.name]
    return dg.AssetMaterialization(asset_key=item.task.name, metadata=metadata, tags=event_tags)


def trace_metadata(trace_id: str | None) -> dict[str, Any]:
    """`trace_id`, and `trace` linking to it when $AGENT_PIPELINES_TRACE_URL is a template such
    as `https://jaeger.example/trace/{trace_id}` (docs/observability.md)."""
    if not trace_id:
        return {}
    metadata: dict[str, Any] = {"trace_id": dg.MetadataValue.text(trace_id)}
    template = os.environ.get(TRACE_URL_ENV)
    if template:
        metadata["trace"] = dg.MetadataValue.url(template.replace("{trace_id}", trace_id))
    return metadata


def succeeded_check(finished: Finished, run_id: str) -> dg.AssetCheckEvaluation:
    item, attempt = finished.item, finished.attempt
    metadata: dict[str, Any] = {
        "status": dg.MetadataValue.text(finished.status),
        "idempotency_key": dg.MetadataValue.text(item.key),
        "trigger": dg.MetadataValue.text(item.trigger.kind),
    }
    if run_id:
        metadata["run"] = dg.MetadataValue.dagster_run(run_id)
    if item.due_time is not None:
        metadata["due_time"] = dg.MetadataValue.timestamp(item.due_time)
    metadata.update(trace_metadata(finished.trace_id))
    if attempt is not None:
        metadata["attempts"] = dg.MetadataValue.int(attempt.number)
        if attempt.error is not None:
            metadata["failure_kind"] = dg.MetadataValue.text(attempt.error.kind.value)
            if attempt.error.status_code is not None:
                metadata["http_status"] = dg.MetadataValue.int(attempt.error.status_code)
    description = _status_sentence(finished)
    passed = finished.status == status.SUCCEEDED
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(item.task.name),
        check_name=SUCCEEDED_CHECK,
        passed=passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.WARN if finished.status == status.SKIPPED else dg.AssetCheckSeverity.ERROR,
        description=description[:1000],
    )


def _status_sentence(finished: Finished) -> str:
    attempt = finished.attempt
    error = attempt.error if attempt is not None else None
    if finished.status == status.SUCCEEDED:
        return "The latest execution succeeded."
    if finished.status == status.RETRYING:
        when = finished.next_attempt_at.isoformat(timespec="seconds") if finished.next_attempt_at else "soon"
        return f"Attempt {attempt.number if attempt else '?'} failed ({error.describe() if error else finished.reason}); retrying at {when}."
    detail = error.describe() if error is not None else (finished.reason or "")
    if finished.reason and error is not None:
        detail = f"{detail} ({finished.reason})"
    return f"{finished.status}: {detail}".strip()


def check_evaluations(
    finished: Finished, results: Sequence[CheckOutcome], declared: Sequence[str], run_id: str
) -> list[dg.AssetCheckEvaluation]:
    """The task's own checks (`checks:` in the catalog) on one output."""
    attempt = finished.attempt
    assert attempt is not None
    return [
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(finished.item.task.name),
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=result.details[:500],
            metadata={
                "prompt_version": dg.MetadataValue.text(attempt.version),
                "canary": dg.MetadataValue.bool(attempt.canary),
                "idempotency_key": dg.MetadataValue.text(finished.item.key),
                **({"run": dg.MetadataValue.dagster_run(run_id)} if run_id else {}),
                **({"score": dg.MetadataValue.float(result.score)} if result.score is not None else {}),
            },
        )
        for result in results
        if result.name in declared
    ]


def publication_for(
    catalog: Catalog, finished: Finished, checks: Sequence[CheckOutcome], run_id: str, report_success: bool = True
) -> Publication:
    """Everything Dagster shows of one finished (or retrying, or skipped) execution.

    `report_success=False` leaves out the `succeeded` check of a success that follows a success:
    its latest evaluation already says so, and each Dagster event costs ~20 ms of a run's CPU."""
    events: list[DagsterEvent] = []
    if finished.ok:
        events.append(materialization(catalog, finished, run_id))
    if report_success or finished.status != status.SUCCEEDED:
        events.append(succeeded_check(finished, run_id))
    task = finished.item.task
    if finished.ok and task.checks is not None:
        events.extend(check_evaluations(finished, checks, task.checks.names(), run_id))
    return Publication(key=finished.item.key, task=task.name, events=tuple(events))


#: The catalog itself as an asset (assets/catalog.py).
CATALOG_ASSET_KEY = dg.AssetKey("agent_catalog")


def agent_asset_key(agent: str) -> dg.AssetKey:
    return dg.AssetKey([AGENT_KEY_PREFIX, agent])


def fleet_asset_key(fleet: str) -> dg.AssetKey:
    return dg.AssetKey([FLEET_KEY_PREFIX, fleet])


def as_check_result(evaluation: dg.AssetCheckEvaluation) -> dg.AssetCheckResult:
    """The same verdict yielded by a check the user executed (the sensors report evaluations
    without a run; a check's own execution must yield results)."""
    return dg.AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )


def health_check(health: AgentHealth) -> dg.AssetCheckEvaluation:
    metadata: dict[str, Any] = {"consecutive_failures": dg.MetadataValue.int(health.consecutive_failures)}
    if health.last_error:
        metadata["last_error"] = dg.MetadataValue.text(health.last_error[:1000])
    if health.unhealthy_since is not None:
        metadata["unhealthy_since"] = dg.MetadataValue.timestamp(health.unhealthy_since)
    if health.next_probe_at is not None:
        metadata["next_probe_at"] = dg.MetadataValue.timestamp(health.next_probe_at)
    description = (
        "Healthy: requests go to it."
        if health.healthy
        else f"Unhealthy: its executions are skipped until a probe succeeds. Last error: {health.last_error}"
    )
    return dg.AssetCheckEvaluation(
        asset_key=agent_asset_key(health.agent),
        check_name=HEALTHY_CHECK,
        passed=health.healthy,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description[:1000],
    )


def republication(catalog: Catalog, execution: Execution, result: ResultRecord | None) -> list[DagsterEvent]:
    """Events for an execution whose run recorded it but died before publishing it, rebuilt
    from the store (they belong to no run; `run` names the run that carried it)."""
    metadata: dict[str, Any] = {
        "idempotency_key": dg.MetadataValue.text(execution.idempotency_key),
        "trigger": dg.MetadataValue.text(execution.trigger),
        "status": dg.MetadataValue.text(execution.status),
        "attempts": dg.MetadataValue.int(execution.attempts),
        "published_late": dg.MetadataValue.text("recorded by a run that ended before it could publish this"),
    }
    if execution.run_id:
        metadata["run"] = dg.MetadataValue.dagster_run(execution.run_id)
    if execution.due_time is not None:
        metadata["due_time"] = dg.MetadataValue.timestamp(execution.due_time)
    events: list[DagsterEvent] = []
    if execution.status == status.SUCCEEDED and result is not None and result.output is not None:
        figures = {
            "output": dg.MetadataValue.md(preview(result.output, PREVIEW_CHARS, execution.idempotency_key)),
            "prompt_version": dg.MetadataValue.text(execution.prompt_version or ""),
            "model": dg.MetadataValue.text(result.model or "default"),
            "session_id": dg.MetadataValue.text(result.session_id or ""),
        }
        if execution.latency_ms is not None:
            figures["latency_ms"] = dg.MetadataValue.float(round(execution.latency_ms, 3))
        if execution.lateness_ms is not None:
            figures["lateness_ms"] = dg.MetadataValue.float(round(execution.lateness_ms, 3))
        event_tags = tags.strict_tags({tags.TASK: execution.task, tags.TRIGGER: execution.trigger, tags.PROMPT_VERSION: execution.prompt_version or ""})
        event_tags["dagster/code_version"] = catalog.prompt_versions.get(execution.task, "")
        events.append(dg.AssetMaterialization(asset_key=execution.task, metadata={**metadata, **figures}, tags=event_tags))
    detail = execution.error or execution.reason or ""
    events.append(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(execution.task),
            check_name=SUCCEEDED_CHECK,
            passed=execution.status == status.SUCCEEDED,
            metadata=metadata,
            severity=dg.AssetCheckSeverity.ERROR,
            description=("The latest execution succeeded." if execution.status == status.SUCCEEDED else f"{execution.status}: {detail}")[:1000],
        )
    )
    return events
