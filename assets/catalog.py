"""The catalog itself as an asset, with a `catalog_health` check listing every problem.

The code location loads whatever part of the catalog is valid; this is where the rest shows
up in the UI: in the asset's definition metadata at once, and as a failing asset check once
`catalog_health_sensor` has run `catalog_health_job` for the loaded catalog.
"""


from typing import Any

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.metadata import table
from agent_pipelines.scheduling.publication import CATALOG_ASSET_KEY
from sensors.catalog_health import CATALOG_HEALTH_JOB

CATALOG_HEALTH_CHECK = "catalog_health"


def problems_table(catalog: Catalog) -> dg.MetadataValue:
    return table(
        {"file": "string", "line": "int", "spec": "string", "field": "string", "problem": "string"},
        [
            {"file": p.file, "line": p.line, "spec": f"{p.kind} {p.name}" if p.name else p.kind, "field": p.field, "problem": p.message}
            for p in catalog.problems
        ],
    )


def tasks_table(catalog: Catalog) -> dg.MetadataValue:
    return table(
        {"task": "string", "agent": "string", "owner": "string", "schedule": "string", "enabled": "bool", "prompt_version": "string"},
        [
            {
                "task": t.name,
                "agent": t.agent or f"fleet {t.fleet}",
                "owner": t.owner,
                "schedule": t.schedule.describe() if t.schedule else "",
                "enabled": t.enabled,
                "prompt_version": catalog.prompt_versions[t.name],
            }
            for t in catalog.tasks.values()
        ],
    )


def build_catalog_definitions(catalog: Catalog) -> dg.Definitions:
    definition_metadata: dict[str, Any] = {
        "catalog_path": dg.MetadataValue.path(str(catalog.root)),
        "problem_count": dg.MetadataValue.int(len(catalog.problems)),
        # The platform's own pages, served beside the UI by `agent-pipelines webserver`.
        "execution_records": dg.MetadataValue.url("/ops/executions"),
        "audit_log": dg.MetadataValue.url("/ops/audit"),
    }
    if catalog.problems:
        definition_metadata["problems"] = problems_table(catalog)

    @dg.asset(
        key=CATALOG_ASSET_KEY,
        group_name="catalog",
        code_version=catalog.fingerprint(),
        description="The agent and task catalog as loaded by this code location.",
        metadata=definition_metadata,
        kinds={"yaml"},
    )
    def agent_catalog() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={
                "files": dg.MetadataValue.json(list(catalog.files)),
                "agent_count": dg.MetadataValue.int(len(catalog.agents)),
                "task_count": dg.MetadataValue.int(len(catalog.tasks)),
                "problem_count": dg.MetadataValue.int(len(catalog.problems)),
                "tasks": tasks_table(catalog),
                "fingerprint": dg.MetadataValue.text(catalog.fingerprint()),
            }
        )

    @dg.asset_check(
        asset=agent_catalog,
        name=CATALOG_HEALTH_CHECK,
        description="Fails while any spec in the catalog is invalid; lists file, line, spec and field.",
    )
    def catalog_health() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=catalog.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                "All specs valid."
                if catalog.ok
                else f"{len(catalog.problems)} problem(s); invalid tasks and their dependents were not loaded."
            ),
            metadata={"problem_count": dg.MetadataValue.int(len(catalog.problems)), "problems": problems_table(catalog)},
        )

    job = dg.define_asset_job(
        CATALOG_HEALTH_JOB,
        selection=dg.AssetSelection.assets(CATALOG_ASSET_KEY),
        description="Materializes the catalog summary and runs the catalog_health check.",
    )
    return dg.Definitions(assets=[agent_catalog], asset_checks=[catalog_health], jobs=[job])
