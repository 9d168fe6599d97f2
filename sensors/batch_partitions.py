"""`batch_shards_sensor`: keeps the shards of `shard_by` batch tasks in step with their items.

Shards named after a column's values are dynamic partitions: when an items file changes, the new
values become new shards (partitions already known are kept, with their history).
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from agent_pipelines.batch.items import distinct_values
from agent_pipelines.catalog.loader import Catalog

SENSOR_NAME = "batch_shards_sensor"


def build_batch_shards_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    tasks = [t for t in catalog.batch_tasks.values() if t.shard_by is not None and t.items and t.items.path]
    if not tasks:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a shard (dynamic partition) for each new value of a batch task's `shard_by` column.",
    )
    def batch_shards_sensor(context) -> dg.SensorResult:  # noqa: ANN001 - Dagster inspects the name
        seen = json.loads(context.cursor or "{}")
        requests = []
        for task in tasks:
            assert task.items is not None and task.items.path is not None and task.shard_by is not None
            path = Path(task.items.path)
            stamp = f"{path.stat().st_mtime_ns}:{path.stat().st_size}" if path.exists() else "missing"
            if seen.get(task.name) == stamp or stamp == "missing":
                continue
            name = f"{task.name}_shards"
            known = set(context.instance.get_dynamic_partitions(name))
            new = [v for v in distinct_values(path, task.shard_by, format=task.items.format) if v not in known]
            if new:
                requests.append(dg.AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=new))
            seen[task.name] = stamp
        return dg.SensorResult(dynamic_partitions_requests=requests, cursor=json.dumps(seen))

    return batch_shards_sensor
