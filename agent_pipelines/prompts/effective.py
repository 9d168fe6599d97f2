"""What the code location loads: the catalog, with each task's active registry version applied.

An asset's code version is fixed when the code location loads, so a promoted prompt must be part
of what loads: a task whose active version was tuned from the prompt the catalog declares runs
that version, and its asset's code version is that version. A task whose catalog prompt has
changed since runs the catalog (a person's edit wins over the tuner).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

from agent_pipelines.catalog.loader import Catalog, load_catalog
from agent_pipelines.catalog.model import AgentSpecBase, RetrySpec, TaskSpec
from agent_pipelines.catalog.versions import prompt_version
from agent_pipelines.prompts.registry import PromptRegistry, PromptVersion, catalog_parameters

log = logging.getLogger(__name__)


def registry_version(task: TaskSpec, agent: AgentSpecBase, catalog_task: TaskSpec) -> str:
    """A version id for a (possibly tuned) task: its prompt hash, plus a parameters digest when
    the tuner changed parameters (timeout, retries) that the prompt hash leaves out."""
    version = prompt_version(task, agent)
    parameters = catalog_parameters(task)
    if parameters != catalog_parameters(catalog_task):
        digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:6]
        version = f"{version}.{digest}"
    return version


def with_version(task: TaskSpec, version: PromptVersion) -> TaskSpec:
    parameters = version.parameters
    update: dict = {"prompt": version.prompt, "system": version.system}
    if "timeout" in parameters:
        update["timeout"] = parameters["timeout"]
    if "retries" in parameters:
        update["retries"] = RetrySpec.model_validate(parameters["retries"])
    return task.model_copy(update=update)


def apply_active_versions(catalog: Catalog, registry: PromptRegistry) -> Catalog:
    actives = registry.with_status("active", catalog.regular_tasks)
    tasks = dict(catalog.tasks)
    versions = dict(catalog.prompt_versions)
    for name, active in actives.items():
        base = catalog.base_versions.get(name)
        if active.base_version != base or active.version == base:
            continue
        tasks[name] = with_version(catalog.tasks[name], active)
        versions[name] = active.version
    return dataclasses.replace(catalog, tasks=tasks, prompt_versions=versions)


def load_effective_catalog() -> Catalog:
    """The catalog plus the registry's active versions, when an instance is configured.

    Never fails to load because of the registry: without DAGSTER_HOME, or when the database is
    unreachable, the catalog's own prompts are used (and a warning says so).
    """
    catalog = load_catalog()
    if not os.environ.get("DAGSTER_HOME"):
        return catalog
    try:
        from dagster import DagsterInstance

        from agent_pipelines.store import StateStore

        with DagsterInstance.get() as instance:
            return apply_active_versions(catalog, PromptRegistry(StateStore.for_instance(instance)))
    except Exception as exc:  # noqa: BLE001 - the code location must load whatever happens here
        log.warning("prompt registry not applied (using the catalog's prompts): %r", exc)
        return catalog
