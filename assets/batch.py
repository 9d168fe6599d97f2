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
    file_source,
    results_source,
)
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.kubernetes_config import run_tags as kubernetes_run_tags
from agent_pipelines.kubernetes_config import task_block
from agent_pipelines.metadata import table
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.triggers import Trigger
from resources.agents import AgentsResource
from resources.shard_io_manager import (
    SHARD_IO_MANAGER_KEY,
    ShardFile,
    ShardParquetIOManager,
    write_combined,
)


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
    p50, p95 = summary.percentile(50), summary.percentile(95)
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
    if p50 is not None and p95 is not None:
        metadata["latency_p50_ms"] = dg.MetadataValue.float(round(p50, 2))
        metadata["latency_p95_ms"] = dg.MetadataValue.float(round(p95, 2))
    if summary.path:
        metadata["path"] = dg.MetadataValue.path(summary.path)
    if summary.failure_samples:
        metadata["failure_samples"] = dg.MetadataValue.json(summary.failure_samples)
    if summary.moves:
        metadata["node_moves"] = dg.MetadataValue.json(summary.moves)
    return metadata


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
        description=task.description or f"Batch task: one prompt per item of {items.path or items.from_task}",
        deps=[upstream] if upstream else [],
        partitions_def=partitions,
        group_name="batch",
        code_version=version,
        owners=[task.owner],
        tags={**task.tags, tags.AGENT: task.agent or task.fleet or ""},
        kinds={agent.kind, "parquet"},
        metadata={
            "prompt_template": dg.MetadataValue.md(f"```jinja\n{task.prompt}\n```"),
            "items": dg.MetadataValue.text(items.path or f"results of {items.from_task}"),
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
        backfill_policy=dg.BackfillPolicy.multi_run(task.shards_per_run) if task.shards_per_run else dg.BackfillPolicy.single_run(),
        op_tags={tags.TASK: task.name, **kubernetes_run_tags([task_block(catalog, task.name)])},  # step pods (k8s_job_executor)
    )
    def _run_shards(
        context: AssetExecutionContext, agents: AgentsResource, shard_io_manager: dg.ResourceParam[ShardParquetIOManager]
    ) -> Iterator[dg.MaterializeResult]:
        io = shard_io_manager
        io.refuse_pod_local_disk(context.instance)
        asset_key = dg.AssetKey(task.name)
        keys = list(context.partition_keys)
        all_keys = static_shard_keys(catalog, task) or list(partitions.get_partition_keys(dynamic_partitions_store=context.instance))
        if items.path:
            source_fn = file_source(items.path, items.format, items.id_column)
        else:
            upstream_path = io.path_for(dg.AssetKey(upstream), None)
            if not upstream_path.exists():
                raise dg.Failure(f"{items.from_task!r} has no combined results yet: materialize {upstream} first", allow_retries=False)
            source_fn = results_source([str(upstream_path)])
        runner = BatchRunner(
            task=task,
            nodes=nodes_for(catalog, task),
            shard_keys=all_keys,
            source=source_fn,
            open_writer=lambda key: io.open_writer(asset_key, key),
            trigger_ref=Trigger.manual(context.run.tags.get(tags.ROOT_RUN_ID, context.run.run_id)).ref,
            log=context.log,
            pool_factory=agents.pool,
        )
        started = time.perf_counter()
        summaries = event_loop.run(runner.run(keys))
        elapsed = time.perf_counter() - started
        total = sum(s.items for s in summaries)
        context.log.info(f"{total} items in {len(summaries)} shard(s) in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} items/s)")
        failed = []
        for summary in summaries:
            metadata = _shard_metadata(summary, version)
            metadata["run_items_per_second"] = dg.MetadataValue.float(round(total / max(elapsed, 1e-9), 1))
            if summary.error or summary.failure_ratio > task.max_failure_ratio:
                failed.append((summary, metadata))
                continue
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=asset_key,
                    partition=summary.key,
                    metadata=metadata,
                    tags={**tags.strict_tags({tags.TASK: task.name, tags.PROMPT_VERSION: version}), "dagster/code_version": version},
                )
            )
        if failed:
            reasons = "; ".join(
                f"{s.key}: {s.error or f'{s.failed}/{s.items} items failed ({s.failure_ratio:.1%} > {task.max_failure_ratio:.1%})'}"
                for s, _ in failed
            )
            raise dg.Failure(
                description=f"{len(failed)} of {len(summaries)} shard(s) failed: {reasons}",
                metadata={s.key: dg.MetadataValue.json({k: str(v.value) for k, v in m.items()}) for s, m in failed},
                allow_retries=False,
            )
        yield from ()

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
            f"{name}_batch_job",
            selection=dg.AssetSelection.assets(name),
            partitions_def=partitions_for(catalog, task),
            description=f"Backfill the shards of batch task {name} (one run for all selected shards).",
            tags=kubernetes_run_tags([task_block(catalog, name)]),  # the run's pod (K8sRunLauncher)
        )
        for name, task in catalog.batch_tasks.items()
    ]
    return dg.Definitions(assets=assets, jobs=jobs)
