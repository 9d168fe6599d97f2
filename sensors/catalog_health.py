"""Runs the `catalog_health` check once for every catalog version the code location loads."""


from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.prompts.registry import PromptRegistry
from resources.store import StoreResource

CATALOG_HEALTH_JOB = "catalog_health_job"


def build_catalog_health_sensor(catalog: Catalog, job: Any) -> dg.SensorDefinition:
    fingerprint = catalog.fingerprint()

    @dg.sensor(
        name="catalog_health_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Checks the loaded catalog whenever it changes (run key = catalog fingerprint).",
    )
    def catalog_health_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        if context.cursor == fingerprint:
            return dg.SensorResult(skip_reason="catalog unchanged since the last check")
        # Every catalog change registers the new prompt versions (the prompt registry's history).
        changed = PromptRegistry(store.for_instance(context.instance)).sync_catalog(catalog)
        if changed:
            context.log.info(f"registered catalog prompts of {len(changed)} task(s)")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"catalog-{fingerprint}")], cursor=fingerprint)

    return catalog_health_sensor
