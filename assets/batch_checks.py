"""Asset checks of a batch task: each configured check, evaluated per shard partition.

Every answered item is checked while the batch runs (`agent_pipelines.batch.evaluation`). Each
check is declared with the shard asset's partitions, and each shard a run materializes reports
its own evaluation (`AssetCheckEvaluation(partition=...)`, targeting that materialization), so the
UI shows a check's state per shard. A check passes when at least `checks.min_pass_rate` (default
1.0: every answered item) of the shard's answered items pass it. Items that got no answer are not
checked: they count against `max_failure_ratio`, which fails the shard; a failed check never
fails the run (severity WARN, as for regular tasks), and its item still counts as ok.

Selecting a check without its asset (the UI's "Execute" on a check) judges the shards' stored
results again under today's `checks`, without calling any agent: local checks on the stored
outputs, the judge's verdict as recorded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # no public name in 1.13
    AssetCheckEvaluationTargetMaterializationData,
)

from agent_pipelines.batch.evaluation import stored_failures
from agent_pipelines.batch.runner import ShardSummary
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.metadata import table
from assets.tasks import CHECK_DESCRIPTIONS
from resources.shard_io_manager import ShardParquetIOManager, iter_result_batches

RECHECK_BATCH_ROWS = 10_000


def batch_check_specs(task: TaskSpec, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    if task.checks is None:
        return []
    share = f"{task.checks.min_pass_rate:.0%}"
    with warnings.catch_warnings():
        # Partitioned checks are "preview" in 1.13: dagster is pinned (pyproject.toml), and
        # tests/test_batch_checks.py reads the per-partition results back from the instance.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name=name,
                asset=task.name,
                partitions_def=partitions,
                description=f"{CHECK_DESCRIPTIONS[name]} Per shard: passes when at least {share} of its answered items pass.",
            )
            for name in task.checks.names()
        ]


def shard_check_evaluations(
    task: TaskSpec,
    summary: ShardSummary,
    *,
    run_id: str,
    active_version: str | None,
    target: AssetCheckEvaluationTargetMaterializationData | None = None,
    evaluated_again: bool = False,
) -> list[dg.AssetCheckEvaluation]:
    """One evaluation per configured check of one shard."""
    if task.checks is None:
        return []
    threshold = task.checks.min_pass_rate
    checked = summary.evaluated
    evaluations = []
    for name in task.checks.names():
        failed = summary.check_failures.get(name, 0)
        rate = (checked - failed) / checked if checked else None
        passed = rate is None or rate >= threshold
        if rate is None:
            description = "No answered item to check in this shard."
        elif failed:
            example = summary.check_samples.get(name, [{}])[0]
            description = (
                f"{failed:,} of {checked:,} answered items failed {name} (pass rate {rate:.1%}, "
                f"at least {threshold:.0%} must pass). E.g. {example.get('item_id')}: {example.get('reason')}"
            )
        else:
            description = f"All {checked:,} answered items passed {name}."
        metadata: dict[str, Any] = {
            "checked": dg.MetadataValue.int(checked),
            "passed": dg.MetadataValue.int(checked - failed),
            "failed": dg.MetadataValue.int(failed),
            "min_pass_rate": dg.MetadataValue.float(threshold),
            "failure_samples": table(
                {"item_id": "string", "prompt_version": "string", "reason": "string", "output": "string"},
                summary.check_samples.get(name, []),
            ),
            "by_prompt_version": table(
                {"prompt_version": "string", "canary": "bool", "checked": "int", "failed": "int", "pass_rate": "float"},
                [
                    {
                        "prompt_version": tally.version,
                        "canary": tally.canary,
                        "checked": tally.items,
                        "failed": tally.failed.get(name, 0),
                        "pass_rate": (tally.items - tally.failed.get(name, 0)) / tally.items if tally.items else None,
                    }
                    for tally in summary.versions.values()
                ],
            ),
            "run": dg.MetadataValue.dagster_run(run_id),
        }
        if rate is not None:
            metadata["pass_rate"] = dg.MetadataValue.float(round(rate, 4))
        if active_version:
            metadata["prompt_version"] = dg.MetadataValue.text(active_version)
        if evaluated_again:
            metadata["evaluated"] = dg.MetadataValue.text("again, on the stored results (no agent called)")
        evaluations.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(task.name),
                check_name=name,
                passed=passed,
                metadata=metadata,
                severity=dg.AssetCheckSeverity.WARN,
                description=description[:1000],
                partition=summary.key,
                target_materialization_data=target,
            )
        )
    return evaluations


def materialization_target(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str, run_id: str | None = None
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The shard's latest materialization (of `run_id`, when given), which a check evaluates."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1).records
    if not records or (run_id is not None and records[0].event_log_entry.run_id != run_id):
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(storage_id=record.storage_id, run_id=record.event_log_entry.run_id, timestamp=record.timestamp)


def checks_alone(
    context: dg.AssetExecutionContext, task: TaskSpec, io: ShardParquetIOManager, keys: Sequence[str]
) -> Iterator[dg.AssetCheckEvaluation]:
    """The selected checks, judged again on each shard's stored results."""
    asset_key = dg.AssetKey(task.name)
    assert task.checks is not None
    wanted = {key.name for key in context.selected_asset_check_keys if key.asset_key == asset_key}
    for key in keys:
        path = io.path_for(asset_key, key)
        if not path.exists():
            context.log.warning(f"shard {key} has no results yet: nothing to check")
            continue
        summary = ShardSummary(key=key, node="")
        for batch in iter_result_batches([path], batch_rows=RECHECK_BATCH_ROWS):
            for row in batch.to_pylist():
                failures = stored_failures(task.checks, row)
                if failures is not None:
                    summary.count_checks(row, failures, key=str(row["item_id"]), canary=False)
        for evaluation in shard_check_evaluations(
            task, summary, run_id=context.run_id, active_version=None, target=materialization_target(context.instance, asset_key, key), evaluated_again=True
        ):
            if evaluation.check_name in wanted:
                yield evaluation
