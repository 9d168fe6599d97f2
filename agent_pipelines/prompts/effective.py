"""A task as a registry version makes it: the version's prompt and tuned parameters applied.

Registry versions apply when a run starts (see `prompts.canary.PromptChooser`), never when the
code location loads: loading the definitions reads only the YAML.
"""

from __future__ import annotations

import hashlib
import json

from agent_pipelines.catalog.model import AgentSpecBase, RetrySpec, TaskSpec
from agent_pipelines.catalog.versions import prompt_version
from agent_pipelines.prompts.registry import PromptVersion, catalog_parameters


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
