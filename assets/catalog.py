"""The catalog itself as an asset, with a `catalog_health` check listing every problem.

The code location loads whatever part of the catalog is valid; this is where the rest shows
up in the UI: in the asset's definition metadata at once, and as a failing asset check once
`catalog_health_sensor` has run `catalog_health_job` for the loaded catalog.
"""


import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.markdown import table

CATALOG_ASSET_KEY = dg.AssetKey("agent_catalog")
CATALOG_HEALTH_CHECK = "catalog_health"


def problems_markdown(catalog: Catalog) -> str:
    if not catalog.problems:
        return "No problems: every spec in the catalog loaded."
    return table(
        ["File", "Line", "Spec", "Field", "Problem"],
        (
            (p.file, p.line or "", f"{p.kind} {p.name}" if p.name else p.kind, p.field or "", p.message)
            for p in catalog.problems
        ),
    )


def tasks_markdown(catalog: Catalog) -> str:
    return table(
        ["Task", "Agent", "Owner", "Schedule", "Enabled", "Prompt version"],
        (
            (
                t.name,
                t.agent or f"fleet {t.fleet}",
                t.owner,
                t.schedule.describe() if t.schedule else "",
                "yes" if t.enabled else "no",
                catalog.prompt_versions[t.name],
            )
            for t in catalog.tasks.values()
        ),
    )


def build_catalog_assets(catalog: Catalog) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    @dg.asset(
        key=CATALOG_ASSET_KEY,
        group_name="catalog",
        code_version=catalog.fingerprint(),
        description="The agent and task catalog as loaded by this code location.",
        metadata={
            "catalog_path": dg.MetadataValue.path(str(catalog.root)),
            "problem_count": dg.MetadataValue.int(len(catalog.problems)),
            "problems": dg.MetadataValue.md(problems_markdown(catalog)),
        },
        kinds={"yaml"},
    )
    def agent_catalog() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={
                "files": dg.MetadataValue.json(list(catalog.files)),
                "agent_count": dg.MetadataValue.int(len(catalog.agents)),
                "task_count": dg.MetadataValue.int(len(catalog.tasks)),
                "problem_count": dg.MetadataValue.int(len(catalog.problems)),
                "tasks": dg.MetadataValue.md(tasks_markdown(catalog)),
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
            metadata={
                "problem_count": dg.MetadataValue.int(len(catalog.problems)),
                "problems": dg.MetadataValue.md(problems_markdown(catalog)),
            },
        )

    return agent_catalog, catalog_health
