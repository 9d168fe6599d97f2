"""`retention_sensor`: the catalog's `retention:` policy, applied a bounded batch at a time.

Every `retention.every` (default 5 min) it archives or deletes terminal executions older than
`keep_days` for at most `tick_budget` seconds, in short transactions with pauses between them
(agent_pipelines.records.retention), so a first run over years of records spreads across ticks
instead of holding locks the scheduler needs. What it moved is logged on the tick and, when it
moved anything, observed on the `agent_catalog` asset (counts, cutoff, whether more remain).
"""

from __future__ import annotations

import dagster as dg

from agent_pipelines.audit import audit, system_actor
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.records.retention import apply_retention
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.publication import CATALOG_ASSET_KEY
from resources.store import StoreResource

SENSOR_NAME = "retention_sensor"


def build_retention_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    policy = catalog.retention
    if policy is None:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=int(policy.every),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Retention: {'archives' if policy.archive else 'deletes'} terminal executions older than "
            f"{policy.keep_days:g} days, {policy.batch_size} per transaction, at most {policy.tick_budget:g} s per tick."
        ),
    )
    def retention_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        state = store.for_instance(context.instance)
        report = apply_retention(state, policy, SYSTEM_CLOCK.now())
        context.log.info(report.describe())
        if report.moved:
            audit(state, system_actor(SENSOR_NAME), "executions.retention", "executions", moved=report.moved,
                  mode="archive" if report.archive else "delete", cutoff=report.cutoff.isoformat(timespec="seconds"))
            context.instance.report_runless_asset_event(
                dg.AssetObservation(
                    asset_key=CATALOG_ASSET_KEY,
                    metadata={
                        "retention_moved": dg.MetadataValue.int(report.moved),
                        "retention_action": dg.MetadataValue.text("archive" if report.archive else "delete"),
                        "retention_cutoff": dg.MetadataValue.text(report.cutoff.isoformat(timespec="seconds")),
                        "retention_batches": dg.MetadataValue.int(report.batches),
                        "retention_seconds": dg.MetadataValue.float(round(report.seconds, 3)),
                        "retention_finished": dg.MetadataValue.bool(report.finished),
                    },
                )
            )
        return dg.SensorResult(skip_reason=report.describe())

    return retention_sensor


def retention_definitions(catalog: Catalog) -> dg.Definitions:
    """The retention sensor when the catalog declares `retention:`, else nothing."""
    sensor = build_retention_sensor(catalog)
    return dg.Definitions(sensors=[sensor] if sensor is not None else [])
