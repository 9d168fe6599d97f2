"""Runs the `catalog_health` check once for every catalog version the code location loads, and
records each catalog change in the audit log, item by item."""


import functools
from typing import Any

import dagster as dg

from agent_pipelines.audit import audit, system_actor
from agent_pipelines.catalog.changes import compare, content_digest, item_digests
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.prompts.registry import PromptRegistry
from resources.store import StoreResource

CATALOG_HEALTH_JOB = "catalog_health_job"


def build_catalog_health_sensor(catalog: Catalog, job: Any) -> dg.SensorDefinition:
    fingerprint = catalog.fingerprint()

    @functools.cache
    def digests() -> dict:
        # Computed on the first tick, not when the code location loads (every run worker loads it).
        return item_digests(catalog)

    @dg.sensor(
        name="catalog_health_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Checks the loaded catalog whenever it changes (run key = catalog fingerprint).",
    )
    def catalog_health_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        cursor = f"{fingerprint}/{content_digest(digests())}"
        if context.cursor == cursor:
            return dg.SensorResult(skip_reason="catalog unchanged since the last check")
        state = store.for_instance(context.instance)
        _audit_catalog_change(state, catalog, digests(), context)
        if (context.cursor or "").split("/")[0] == fingerprint:
            return dg.SensorResult(skip_reason="catalog changed without changing what runs", cursor=cursor)
        # Every catalog change registers the new prompt versions (the prompt registry's history).
        changed = PromptRegistry(state).sync_catalog(catalog)
        if changed:
            context.log.info(f"registered catalog prompts of {len(changed)} task(s)")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"catalog-{fingerprint}")], cursor=cursor)

    return catalog_health_sensor


def _audit_catalog_change(state: Any, catalog: Catalog, digests: dict, context: dg.SensorEvaluationContext) -> None:
    """One `catalog.change` entry per load that added, removed or changed an item."""
    change = compare(state.catalog_item_digests(), digests)
    if not change:
        return
    audit(
        state,
        system_actor("catalog_health_sensor"),
        "catalog.change",
        str(catalog.root),
        **change.summary(),
        files=len(catalog.files),
        problems=len(catalog.problems),
        fingerprint=catalog.fingerprint(),
        sources={item: digests[item].source for item in (change.added + change.changed)[:50]},
    )
    state.replace_catalog_items({item: digests[item] for item in change.added + change.changed}, change.removed)
    context.log.info(f"catalog change audited: {change.summary()['counts']}")
