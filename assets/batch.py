"""Batch tasks: one partitioned asset whose partitions are the shards, and a combined asset.

A backfill of the shards runs as one run and one step (`BackfillPolicy.single_run`) on the
in-process executor, so the shards share one process and one event loop instead of starting a
process each. Each shard is still its own partition: a shard that succeeds is materialized
with its own metadata as soon as the step ends, a shard above its failure ratio fails alone and
can be re-run alone. Results go to Parquet through `ShardParquetIOManager`; the combined asset
`<task>_all` receives the shards' paths, never their rows, and streams them into one file.
"""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from agent_pipelines import tags
from agent_pipelines.batch.items import shard_keys
from agent_pipelines.batch.runner import (
    BatchRunner,
    Node,
    ShardSummary,
)
from agent_pipelines.batch.sources import ItemSourceError, item_source
from agent_pipelines.batch.execution import close_execution, open_execution
from agent_pipelines.batch.resume import ShardResume
from agent_pipelines.batch.triggers import batch_job_name
from agent_pipelines.batch.evaluation import ItemEvaluation, history_rows
from agent_pipelines.batch.progress import ProgressBoard, ProgressReporter
from agent_pipelines.batch.summary import check_pass_rate, latency_histogram, percentiles, run_metadata, version_table
from agent_pipelines.prompts.registry import PromptRegistry
from assets.batch_checks import batch_check_specs, checks_alone, materialization_target, shard_check_evaluations
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.kubernetes_config import run_tags as kubernetes_run_tags
from agent_pipelines.kubernetes_config import task_block
from agent_pipelines.metadata import table
from agent_pipelines.scheduling.heartbeat import RunHeartbeat
from resources.agents import AgentsResource
from resources.shard_io_manager import (
    SHARD_IO_MANAGER_KEY,
    ShardFile,
    ShardParquetIOManager,
    write_combined,
)
from resources.store import StoreResource


#: Runs with more shards put the run's tables on their first shard only (metadata is stored
#: with every event).
RUN_TABLES_ON_EVERY_SHARD = 32


def combined_key(task: str) -> str:
    return f"{task}_all"


def static_shard_keys(catalog: Catalog, task: TaskSpec) -> list[str] | None:
    """The shard keys known from the catalog, or None when they come from the data."""
    if task.shards is not None:
        return shard_keys(task.shards)
    if task.shard_by is not None:
        return None
    assert task.fleet is not None
    return [node.name for node in catalog.fleets[task.fleet].node_list()]


def partitions_for(catalog: Catalog, task: TaskSpec) -> dg.PartitionsDefinition:
    keys = static_shard_keys(catalog, task)
    if keys is None:
        return dg.DynamicPartitionsDefinition(name=f"{task.name}_shards")
    return dg.StaticPartitionsDefinition(keys)


def nodes_for(catalog: Catalog, task: TaskSpec) -> list[Node]:
    if task.fleet is not None:
        fleet = catalog.fleets[task.fleet]
        return [
            Node(name=node.name, spec=spec, health_path=fleet.health_path)
            for node, spec in zip(fleet.node_list(), fleet.node_specs, strict=True)
        ]
    assert task.agent is not None
    return [Node(name=task.agent, spec=catalog.agents[task.agent])]


def _shard_metadata(summary: ShardSummary, version: str) -> dict[str, Any]:
    """A shard's figures (numbers are plotted per partition across runs in the UI)."""
    metadata: dict[str, Any] = {
        "items": dg.MetadataValue.int(summary.items),
        "ok": dg.MetadataValue.int(summary.ok),
        "failed": dg.MetadataValue.int(summary.failed),
        "retried": dg.MetadataValue.int(summary.retried),
        "failure_ratio": dg.MetadataValue.float(round(summary.failure_ratio, 4)),
        "tokens_in": dg.MetadataValue.int(summary.tokens_in),
        "tokens_out": dg.MetadataValue.int(summary.tokens_out),
        "node": dg.MetadataValue.text(summary.node),
        "prompt_version": dg.MetadataValue.text(version),
    }
    for q, cut in percentiles(summary.latencies).items():
        metadata[f"latency_p{q}_ms"] = dg.MetadataValue.float(round(cut, 2))
    if summary.latencies:
        metadata["latency_histogram"] = latency_histogram(summary.latencies)
    rate = check_pass_rate(summary)
    if rate is not None:
        metadata["checked"] = dg.MetadataValue.int(summary.evaluated)
        metadata["failed_checks"] = dg.MetadataValue.int(summary.check_failed)
        metadata["check_pass_rate"] = dg.MetadataValue.float(round(rate, 4))
        metadata["prompt_versions"] = version_table(summary, version)
    if summary.path:
        metadata["path"] = dg.MetadataValue.path(summary.path)
    if summary.failure_samples:
        metadata["failure_samples"] = dg.MetadataValue.json(summary.failure_samples)
    if summary.moves:
        metadata["node_moves"] = dg.MetadataValue.json(summary.moves)
    return metadata


def _record_history(registry: PromptRegistry, task: TaskSpec, context: AssetExecutionContext, summaries: list[ShardSummary]) -> None:
    """The run's checked items, per prompt version, into the history the tuner reads (failed
    shards too: their answered items are evidence all the same)."""
    if task.checks is None:
        return
    rows = history_rows(task.name, context.run_id, (t for s in summaries for t in s.versions.values()), task.checks.names())
    try:
        registry.record_batch_evaluations(rows)
    except Exception:  # the results are written: bookkeeping must not fail the run
        context.log.exception("could not record the items' evaluations for prompt tuning")


def shard_problem(summary: ShardSummary, task: TaskSpec) -> str | None:
    """Why a shard failed (could not run, or too many items failed), or None."""
    if summary.error:
        return summary.error
    if summary.failure_ratio > task.max_failure_ratio:
        return f"{summary.failed}/{summary.items} items failed ({summary.failure_ratio:.1%} > {task.max_failure_ratio:.1%})"
    return None


def build_batch_assets(catalog: Catalog, task: TaskSpec) -> list[dg.AssetsDefinition]:
    version = catalog.prompt_versions[task.name]
    agent = catalog.agent_of(task)
    partitions = partitions_for(catalog, task)
    source = catalog.locations.get(f"task:{task.name}")
    items = task.items
    assert items is not None
    upstream = combined_key(items.from_task) if items.from_task else None
    spec = dg.AssetSpec(
        key=task.name,
        description=task.description or f"Batch task: one prompt per item of {items.describe()}",
        deps=[*([upstream] if upstream else []), *([items.from_output] if items.from_output else []), *task.depends_on],
        partitions_def=partitions,
        group_name="batch",
        code_version=version,
        owners=[task.owner],
        tags={**task.tags, tags.AGENT: task.agent or task.fleet or ""},
        kinds={agent.kind, "parquet"},
        metadata={
            "prompt_template": dg.MetadataValue.md(f"```jinja\n{task.prompt}\n```"),
            "items": dg.MetadataValue.text(items.describe()),
            "sharding": dg.MetadataValue.text(
                f"{task.shards} shards by item id" if task.shards else f"by column {task.shard_by!r}" if task.shard_by else f"one shard per node of fleet {task.fleet}"
            ),
            "max_failure_ratio": dg.MetadataValue.float(task.max_failure_ratio),
            "prompt_version": dg.MetadataValue.text(version),
            **({"catalog_source": dg.MetadataValue.text(f"{source.file}:{source.line}")} if source else {}),
        },
        skippable=True,
    ).with_io_manager_key(SHARD_IO_MANAGER_KEY)

    @dg.multi_asset(
        name=task.name,
        specs=[spec],
        check_specs=batch_check_specs(task, partitions),
        can_subset=True,  # a check can be run alone (on the stored results), and need not always be reported
        backfill_policy=dg.BackfillPolicy.multi_run(task.shards_per_run) if task.shards_per_run else dg.BackfillPolicy.single_run(),
        op_tags={tags.TASK: task.name, **kubernetes_run_tags([task_block(catalog, task.name)])},  # step pods (k8s_job_executor)
    )
    def _run_shards(
        context: AssetExecutionContext, agents: AgentsResource, shard_io_manager: dg.ResourceParam[ShardParquetIOManager], store: StoreResource
    ) -> Iterator[dg.MaterializeResult]:
        io = shard_io_manager
        io.refuse_pod_local_disk(context.instance)
        asset_key = dg.AssetKey(task.name)
        keys = list(context.partition_keys)
        if asset_key not in context.selected_asset_keys:  # the UI's "Execute" on a check
            yield from checks_alone(context, task, io, keys)
            return
        all_keys = static_shard_keys(catalog, task) or list(partitions.get_partition_keys(dynamic_partitions_store=context.instance))
        try:
            source_fn = item_source(
                items,
                task=task.name,
                store=store.for_instance(context.instance) if items.from_output else None,
                results_path=lambda: io.path_for(dg.AssetKey(upstream), None),
            )
        except ItemSourceError as exc:  # bad configuration or missing upstream data: a retry cannot help
            raise dg.Failure(str(exc), allow_retries=False) from None
        state = store.for_instance(context.instance)
        execution = open_execution(state, catalog, task, context.run)
        runner = BatchRunner(
            task=task,
            nodes=nodes_for(catalog, task),
            shard_keys=all_keys,
            source=source_fn,
            open_writer=lambda key: io.open_writer(asset_key, key, defaults={"execution": execution.key}),
            trigger=execution.trigger,
            context=execution.context,
            log=context.log,
            pool_factory=agents.pool,
            resume=ShardResume(execution.key, lambda key: io.path_for(asset_key, key)),
        )
        registry = PromptRegistry(state)
        runner.evaluation = evaluation = ItemEvaluation.for_run(catalog, task, registry, agents.pool)
        runner.progress = ProgressBoard()
        runner.load_store, runner.run_id = state, context.run_id
        progress = ProgressReporter(context.instance, context.run_id, asset_key, runner.progress, log=context.log)
        started = time.perf_counter()
        try:
            with RunHeartbeat(state, context.run_id), progress:
                summaries = runner.run_all(keys)
        except BaseException as exc:
            close_execution(state, execution, items=0, ok=0, failed=0, shards=[], error=f"{type(exc).__name__}: {exc}")
            raise
        elapsed = time.perf_counter() - started
        problems = {s.key: problem for s in summaries if (problem := shard_problem(s, task))}
        close_execution(
            state,
            execution,
            items=sum(s.items for s in summaries),
            ok=sum(s.ok for s in summaries),
            failed=sum(s.failed for s in summaries),
            tokens_in=sum(s.tokens_in for s in summaries),
            tokens_out=sum(s.tokens_out for s in summaries),
            shards=[{"shard": s.key, "node": s.node, "items": s.items, "ok": s.ok, "failed": s.failed, "resumed": s.resumed} for s in summaries],
            error="; ".join(f"{key}: {problem}" for key, problem in problems.items()) or None,
        )
        total = sum(s.items for s in summaries)
        context.log.info(f"{total} items in {len(summaries)} shard(s) in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} items/s)")
        _record_history(registry, task, context, summaries)
        active = evaluation.active.version or version
        run_tables = run_metadata(summaries)
        tables_on: str | None = None  # the first shard materialized: a big run's tables go there only
        failed = []
        for summary in summaries:
            metadata = _shard_metadata(summary, active)
            metadata["run_items_per_second"] = dg.MetadataValue.float(round(total / max(elapsed, 1e-9), 1))
            if summary.key in problems:
                failed.append((summary, metadata))
                continue
            if tables_on is None or len(summaries) <= RUN_TABLES_ON_EVERY_SHARD:
                metadata.update(run_tables)
                tables_on = tables_on or summary.key
            else:
                metadata["run_summary"] = dg.MetadataValue.text(f"the run's tables are on shard {tables_on}'s materialization")
            yield dg.AssetMaterialization(
                asset_key=asset_key,
                partition=summary.key,
                metadata=metadata,
                # the definition's code version (the catalog's prompt), so a registry or canary
                # version never makes the shard stale; the version that ran is `prompt_version`
                tags={**tags.strict_tags({tags.TASK: task.name, tags.PROMPT_VERSION: active}), "dagster/code_version": version},
            )
            target = materialization_target(context.instance, asset_key, summary.key, context.run_id)
            for check in shard_check_evaluations(task, summary, run_id=context.run_id, active_version=active, target=target):
                if check.asset_check_key in context.selected_asset_check_keys:
                    yield check
        if failed:
            reasons = "; ".join(f"{s.key}: {problems[s.key]}" for s, _ in failed)
            raise dg.Failure(
                description=f"{len(failed)} of {len(summaries)} shard(s) failed: {reasons}",
                metadata={
                    s.key: dg.MetadataValue.json({k: str(v.value) for k, v in m.items() if not isinstance(v, dg.TableMetadataValue)})
                    for s, m in failed
                },
                allow_retries=False,
            )

    @dg.asset(
        name=combined_key(task.name),
        ins={"shards": dg.AssetIn(task.name, partition_mapping=dg.AllPartitionMapping())},
        io_manager_key=SHARD_IO_MANAGER_KEY,
        group_name="batch",
        description=f"All shards of {task.name} in one Parquet file (rebuilt after every shard run).",
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"parquet"},
        required_resource_keys={SHARD_IO_MANAGER_KEY},
    )
    def _combined(context: AssetExecutionContext, shards: dict[str, str]) -> ShardFile:
        io: ShardParquetIOManager = getattr(context.resources, SHARD_IO_MANAGER_KEY)
        io.refuse_pod_local_disk(context.instance)
        target = io.path_for(context.asset_key, None)
        expected = static_shard_keys(catalog, task) or list(partitions.get_partition_keys(dynamic_partitions_store=context.instance))
        rows = write_combined([shards[k] for k in sorted(shards)], target)
        missing = sorted(set(expected) - set(shards))
        context.add_output_metadata(
            {
                "shards": dg.MetadataValue.int(len(shards)),
                "missing_shards": dg.MetadataValue.json(missing),
                "rows": dg.MetadataValue.int(rows),
                "sources": table({"shard": "string", "path": "string"}, [{"shard": k, "path": v} for k, v in sorted(shards.items())]),
            }
        )
        return ShardFile(path=str(target), rows=rows)

    return [_run_shards, _combined]


def build_batch_definitions(catalog: Catalog) -> dg.Definitions:
    """Each batch task's shard asset and combined asset, and its backfill job."""
    assets = [a for task in catalog.batch_tasks.values() for a in build_batch_assets(catalog, task)]
    jobs = [
        dg.define_asset_job(
            batch_job_name(name),
            selection=dg.AssetSelection.assets(name),
            partitions_def=partitions_for(catalog, task),
            description=f"Backfill the shards of batch task {name} (one run for all selected shards).",
            tags=kubernetes_run_tags([task_block(catalog, name)]),  # the run's pod (K8sRunLauncher)
        )
        for name, task in catalog.batch_tasks.items()
    ]
    return dg.Definitions(assets=assets, jobs=jobs)
