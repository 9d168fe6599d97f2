"""Catalog -> Dagster `Definitions`: each area builds its own, and they are merged here.

A pure function of the catalog (the YAML): no database, migration or instance is touched while
the code location loads. Registry prompt versions, pauses and agent health are read when runs
start and sensors tick.
"""

from __future__ import annotations

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from assets import (
    build_agent_definitions,
    build_batch_definitions,
    build_catalog_definitions,
    build_fleet_definitions,
    build_prompt_definitions,
    build_task_definitions,
)
from jobs.control import build_control_job
from jobs.dispatch import build_dispatch_jobs
from resources import AGENTS_KEY, STORE_KEY, AgentsResource, ShardParquetIOManager, StoreResource
from resources.shard_io_manager import SHARD_IO_MANAGER_KEY
from sensors import build_sensor_definitions


def build_definitions(catalog: Catalog) -> dg.Definitions:
    areas = dg.Definitions.merge(
        build_task_definitions(catalog),
        build_agent_definitions(catalog),
        build_fleet_definitions(catalog),
        build_batch_definitions(catalog),
        build_prompt_definitions(catalog),
        build_catalog_definitions(catalog),
        dg.Definitions(jobs=[*build_dispatch_jobs(catalog), build_control_job(catalog)]),
    )
    jobs = {job.name: job for job in areas.jobs or []}
    return dg.Definitions.merge(
        areas,
        build_sensor_definitions(catalog, jobs),
        dg.Definitions(
            resources={
                STORE_KEY: StoreResource(),
                AGENTS_KEY: AgentsResource(),
                SHARD_IO_MANAGER_KEY: ShardParquetIOManager(),
            },
            executor=dg.in_process_executor,
        ),
    )
