"""Prompt history as data, and the tuning loop as an asset that decides from it.

`prompt_history`: per task and prompt version, executions, pass rate overall and per check,
latency and token percentiles and cost, as a DataFrame (Parquet through the shard IO manager)
with a readable table in its metadata. `prompt_tuning`: the feedback loop's decisions for this
run (proposed, promoted, rejected, awaiting approval), recorded with the versions they concern.
"""

import os
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster import AssetExecutionContext

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.markdown import table
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.prompts.tuning import Tuner
from agent_pipelines.store import StateStore, schema
from assets.batch import SHARD_IO_MANAGER_KEY

HISTORY_ASSET = "prompt_history"
TUNING_ASSET = "prompt_tuning"
TUNING_JOB = "prompt_tuning_job"
#: Where to ask for a code location reload after a promotion (the webserver), if set.
WEBSERVER_URL_ENV = "AGENT_PIPELINES_WEBSERVER_URL"
LOCATION_NAME_ENV = "AGENT_PIPELINES_LOCATION_NAME"


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
    if rows.empty:
        return pd.DataFrame(columns=columns)
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
    return frame.drop(columns=["tokens_total"]).sort_values(["task", "version"]).reset_index(drop=True)


def build_prompt_assets(catalog: Catalog) -> tuple[list[dg.AssetsDefinition], list[Any]]:
    """The two assets, the tuning job, its hourly schedule (on when any task is tuned)."""

    @dg.asset(
        name=HISTORY_ASSET,
        group_name="prompts",
        io_manager_key=SHARD_IO_MANAGER_KEY,
        description="Per task and prompt version: executions, pass rates per check, latency, tokens, cost.",
        kinds={"pandas", "parquet"},
    )
    def prompt_history(context: AssetExecutionContext) -> pd.DataFrame:
        frame = history_frame(catalog, StateStore.for_instance(context.instance))
        shown = frame[["task", "version", "executions", "pass_rate", "latency_p95_ms", "tokens_p95", "cost"]] if not frame.empty else frame
        context.add_output_metadata(
            {
                "versions": dg.MetadataValue.int(len(frame)),
                "history": dg.MetadataValue.md(
                    table(list(shown.columns), (tuple(_fmt(v) for v in row) for row in shown.itertuples(index=False)))
                ),
            }
        )
        return frame

    @dg.asset(
        name=TUNING_ASSET,
        group_name="prompts",
        deps=[HISTORY_ASSET],
        config_schema={"tasks": dg.Field([str], is_required=False, description="limit tuning to these tasks")},
        description="The feedback loop: proposes, canaries, promotes or drops prompt versions.",
    )
    def prompt_tuning(context: AssetExecutionContext) -> dg.MaterializeResult:
        store = StateStore.for_instance(context.instance)
        tuner = Tuner(catalog, PromptRegistry(store), outputs_for=lambda task, keys: outputs_of(context.instance, task, keys))
        decisions = tuner.run((context.op_config or {}).get("tasks"))
        for decision in decisions:
            context.log.info(f"{decision.task}: {decision.action} {decision.version or ''} {decision.details}")
        promoted = [d for d in decisions if d.action == "promoted"]
        if promoted:
            context.log.info(reload_code_location())
        return dg.MaterializeResult(
            metadata={
                "decisions": dg.MetadataValue.md(
                    table(["Task", "Action", "Version", "Details"], ((d.task, d.action, d.version or "", _short(d.details)) for d in decisions))
                ),
                "promoted": dg.MetadataValue.json([d.task for d in promoted]),
                "proposed": dg.MetadataValue.json([d.task for d in decisions if d.action == "proposed"]),
            }
        )

    job = dg.define_asset_job(TUNING_JOB, selection=[HISTORY_ASSET, TUNING_ASSET], description="Prompt history, then the tuning loop.")
    tuned = any(t.tuning is not None for t in catalog.regular_tasks.values())
    schedule = dg.ScheduleDefinition(
        name="prompt_tuning_schedule",
        cron_schedule="17 * * * *",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING if tuned else dg.DefaultScheduleStatus.STOPPED,
        description="Hourly pass over every tuned task (the prompt_quality_sensor reacts sooner).",
    )
    return [prompt_history, prompt_tuning], [job, schedule]


def outputs_of(instance: dg.DagsterInstance, task: str, keys: list[str]) -> dict[str, str]:
    """Outputs of given executions, from the task's materializations."""
    wanted = set(keys)
    found: dict[str, str] = {}
    for record in instance.fetch_materializations(dg.AssetKey(task), limit=500).records:
        metadata = record.asset_materialization.metadata
        key = metadata.get("idempotency_key")
        if key is not None and key.value in wanted and "output" in metadata:
            found[key.value] = str(metadata["output"].value)
    return found


def reload_code_location() -> str:
    """Ask the webserver to reload the code location so the promoted version becomes the asset's
    code version; without a webserver address, it applies at the next reload."""
    url = os.environ.get(WEBSERVER_URL_ENV)
    if not url:
        return "promoted: applies at the next code location reload (dagster dev reloads within a minute)"
    from urllib.parse import urlparse

    from dagster_graphql import DagsterGraphQLClient

    parsed = urlparse(url)
    client = DagsterGraphQLClient(parsed.hostname or "127.0.0.1", port_number=parsed.port or 80)
    location = os.environ.get(LOCATION_NAME_ENV, "agent_pipelines.definitions")
    try:
        status = client.reload_repository_location(location)
    except Exception as exc:  # noqa: BLE001 - reloading is best effort; the next reload applies it anyway
        return f"promoted; reloading {location} at {url} failed ({exc!r}): it applies at the next reload"
    return f"promoted; reloaded code location {location}: {status.status}"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if pd.isna(value) else round(value, 3)
    return value


def _short(details: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in details.items())
    return text[:300]
