"""What the Dagster UI shows of an agent's load: an observation on its asset (`agents/<name>`)
with requests in flight and waiting, its learned limit and latency (numeric metadata, so the UI
plots them over time), and its `not_saturated` check, failed while executions wait too long for
it or wait past their deadline."""

from __future__ import annotations

from typing import Any

import dagster as dg

from agent_pipelines.scheduling.load import SATURATED_FOR, SATURATED_WAIT_S, LoadSummary
from agent_pipelines.scheduling.publication import agent_asset_key

NOT_SATURATED_CHECK = "not_saturated"
CHECK_DESCRIPTION = (
    f"The agent keeps up: no execution has waited {SATURATED_WAIT_S:g} s for it in the platform's queue, "
    f"and none waited past its deadline in the last {int(SATURATED_FOR.total_seconds() // 60)} minutes."
)


def load_metadata(summary: LoadSummary) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "in_flight": dg.MetadataValue.int(summary.in_flight),
        "queued": dg.MetadataValue.int(summary.queued),
        "limit": dg.MetadataValue.int(summary.limit),
        "max_concurrency": dg.MetadataValue.int(summary.max_limit),
        "skipped_saturated": dg.MetadataValue.int(summary.skipped),
        "saturated": dg.MetadataValue.bool(summary.saturated),
        "measuring_baseline": dg.MetadataValue.bool(summary.measuring_baseline),
        "load_updated_at": dg.MetadataValue.timestamp(summary.updated_at),
    }
    if summary.latency_ms is not None:
        metadata["latency_ms"] = dg.MetadataValue.float(summary.latency_ms)
    if summary.baseline_ms is not None:
        metadata["baseline_latency_ms"] = dg.MetadataValue.float(summary.baseline_ms)
    if summary.solo_ms is not None:
        metadata["solo_latency_ms"] = dg.MetadataValue.float(summary.solo_ms)
    if summary.oldest_wait_s is not None:
        metadata["oldest_wait_s"] = dg.MetadataValue.float(round(summary.oldest_wait_s, 3))
    return metadata


def load_observation(summary: LoadSummary) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=agent_asset_key(summary.agent), metadata=load_metadata(summary))


def saturation_evaluation(agent: str, summary: LoadSummary | None) -> dg.AssetCheckEvaluation:
    if summary is None:
        return dg.AssetCheckEvaluation(
            asset_key=agent_asset_key(agent),
            check_name=NOT_SATURATED_CHECK,
            passed=True,
            description="No run has called this agent yet.",
        )
    state = "Saturated" if summary.saturated else "Keeps up"
    return dg.AssetCheckEvaluation(
        asset_key=agent_asset_key(agent),
        check_name=NOT_SATURATED_CHECK,
        passed=not summary.saturated,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{state}: {summary.describe()}"[:1000],
        metadata=load_metadata(summary),
    )
