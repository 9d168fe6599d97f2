"""Prompt history as data, and the tuning loop as an asset that decides from it.

`prompt_history`: per task and prompt version, executions, pass rate overall and per check,
latency and token percentiles and cost, as a DataFrame (Parquet through the shard IO manager)
with a readable table in its metadata. `prompt_tuning`: the feedback loop's decisions for this
run (proposed, promoted, rejected, awaiting approval), recorded with the versions they concern.
"""

import json
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster import AssetExecutionContext

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.metadata import table
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.prompts.tuning import TUNING_JOB, Tuner
from agent_pipelines.store import StateStore, schema
from resources.agents import AgentsResource
from resources.shard_io_manager import SHARD_IO_MANAGER_KEY
from resources.store import StoreResource

HISTORY_ASSET = "prompt_history"
TUNING_ASSET = "prompt_tuning"


def history_frame(catalog: Catalog, store: StateStore) -> pd.DataFrame:
    evaluations = schema.evaluations
    with store.engine.connect() as conn:
        rows = pd.read_sql(
            sa.select(
                evaluations.c.task,
                evaluations.c.version,
                evaluations.c.idempotency_key,
                evaluations.c.check_name,
                evaluations.c.passed,
                evaluations.c.latency_ms,
                evaluations.c.tokens,
                evaluations.c.canary,
            ),
            conn,
        )
    columns = ["task", "version", "executions", "pass_rate", "canary_executions", "latency_p50_ms", "latency_p95_ms", "tokens_p50", "tokens_p95", "cost"]
    batches = _batch_history(store)
    if not batches.empty:
        batches = batches.reindex(columns=[*columns, *(c for c in batches.columns if c not in columns)])
    if rows.empty:
        return pd.DataFrame(columns=columns) if batches.empty else batches.sort_values(["task", "version"]).reset_index(drop=True)
    per_execution = rows.groupby(["task", "version", "idempotency_key"]).agg(
        passed=("passed", "all"), latency_ms=("latency_ms", "first"), tokens=("tokens", "first"), canary=("canary", "first")
    )
    grouped = per_execution.groupby(level=["task", "version"])
    frame = pd.DataFrame(
        {
            "executions": grouped.size(),
            "pass_rate": grouped["passed"].mean(),
            "canary_executions": grouped["canary"].sum(),
            "latency_p50_ms": grouped["latency_ms"].quantile(0.5),
            "latency_p95_ms": grouped["latency_ms"].quantile(0.95),
            "tokens_p50": grouped["tokens"].quantile(0.5),
            "tokens_p95": grouped["tokens"].quantile(0.95),
            "tokens_total": grouped["tokens"].sum(),
        }
    )
    checks = rows.pivot_table(index=["task", "version"], columns="check_name", values="passed", aggfunc="mean")
    checks.columns = [f"pass_rate_{c}" for c in checks.columns]
    frame = frame.join(checks).reset_index()

    def cost(row: pd.Series) -> float | None:
        task = catalog.tasks.get(row["task"])
        agent = catalog.agents.get(task.agent) if task is not None and task.agent else None
        price = agent.cost_per_1k_tokens if agent is not None else None
        return round(float(row["tokens_total"]) / 1000.0 * price, 6) if price is not None else None

    frame["cost"] = frame.apply(cost, axis=1)
    frame = pd.concat([frame.drop(columns=["tokens_total"]), batches], ignore_index=True) if not batches.empty else frame.drop(columns=["tokens_total"])
    return frame.sort_values(["task", "version"]).reset_index(drop=True)


def _batch_history(store: StateStore) -> pd.DataFrame:
    """Batch tasks per version: their items are the executions (recorded per run, in aggregate)."""
    batch = schema.batch_evaluations
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(batch.c.task, batch.c.version, batch.c.canary, batch.c.checked, batch.c.passed, batch.c.failed_checks)).all()
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for task, version, canary, items, passed, failed_checks in rows:
        entry = totals.setdefault((task, version), {"executions": 0, "passed": 0, "canary_executions": 0, "failed": {}})
        entry["executions"] += items
        entry["passed"] += passed
        entry["canary_executions"] += items if canary else 0
        for check, count in json.loads(failed_checks).items():
            entry["failed"][check] = entry["failed"].get(check, 0) + count
    records = []
    for (task, version), entry in totals.items():
        executions = entry["executions"]
        record: dict[str, Any] = {
            "task": task,
            "version": version,
            "executions": executions,
            "pass_rate": entry["passed"] / executions if executions else None,
            "canary_executions": entry["canary_executions"],
        }
        record.update({f"pass_rate_{check}": 1 - count / executions for check, count in entry["failed"].items() if executions})
        records.append(record)
    return pd.DataFrame.from_records(records)


def build_prompt_definitions(catalog: Catalog) -> dg.Definitions:
    """The two assets, the tuning job, its hourly schedule (on when any task is tuned)."""

    @dg.asset(
        name=HISTORY_ASSET,
        group_name="prompts",
        io_manager_key=SHARD_IO_MANAGER_KEY,
        description="Per task and prompt version: executions, pass rates per check, latency, tokens, cost.",
        kinds={"pandas", "parquet"},
    )
    def prompt_history(context: AssetExecutionContext, store: StoreResource) -> pd.DataFrame:
        frame = history_frame(catalog, store.for_instance(context.instance))
        columns = {"task": "string", "version": "string", "executions": "int", "pass_rate": "float", "latency_p95_ms": "float", "tokens_p95": "float", "cost": "float"}
        rows = frame[list(columns)].to_dict("records") if not frame.empty else []
        context.add_output_metadata({"versions": dg.MetadataValue.int(len(frame)), "history": table(columns, rows)})
        return frame

    @dg.asset(
        name=TUNING_ASSET,
        group_name="prompts",
        deps=[HISTORY_ASSET],
        config_schema={"tasks": dg.Field([str], is_required=False, description="limit tuning to these tasks")},
        description="The feedback loop: proposes, canaries, promotes or drops prompt versions.",
    )
    def prompt_tuning(context: AssetExecutionContext, store: StoreResource, agents: AgentsResource) -> dg.MaterializeResult:
        tuner = Tuner(catalog, PromptRegistry(store.for_instance(context.instance)), pool_factory=agents.pool)
        decisions = tuner.run((context.op_config or {}).get("tasks"))
        for decision in decisions:
            context.log.info(f"{decision.task}: {decision.action} {decision.version or ''} {decision.details}")
        promoted = [d for d in decisions if d.action == "promoted"]
        return dg.MaterializeResult(
            metadata={
                "decisions": table(
                    {"task": "string", "action": "string", "version": "string", "details": "string"},
                    [{"task": d.task, "action": d.action, "version": d.version, "details": _short(d.details)} for d in decisions],
                ),
                "promoted": dg.MetadataValue.json([d.task for d in promoted]),
                "proposed": dg.MetadataValue.json([d.task for d in decisions if d.action == "proposed"]),
            }
        )

    job = dg.define_asset_job(TUNING_JOB, selection=[HISTORY_ASSET, TUNING_ASSET], description="Prompt history, then the tuning loop.")
    tuned = any(t.tuning is not None for t in catalog.tasks.values())
    schedule = dg.ScheduleDefinition(
        name="prompt_tuning_schedule",
        cron_schedule="17 * * * *",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING if tuned else dg.DefaultScheduleStatus.STOPPED,
        description="Hourly pass over every tuned task (the prompt_quality_sensor reacts sooner).",
    )
    return dg.Definitions(assets=[prompt_history, prompt_tuning], jobs=[job], schedules=[schedule])


def _short(details: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in details.items())
    return text[:300]
