"""Which prompt an execution uses: the active one, or, for a share of executions, the candidate.

The choice is a pure function of the execution's idempotency key, so every attempt of one
execution (and a re-execution of it) uses the same prompt version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.prompts.effective import with_version
from agent_pipelines.prompts.registry import PromptRegistry, PromptVersion


def in_canary(key: str, share: float) -> bool:
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000
    return bucket < share * 10_000


class PromptChooser:
    """Loads the candidates of a run's tuned tasks once, then answers per execution."""

    def __init__(self, catalog: Catalog, registry: PromptRegistry | None, tasks: Iterable[str]) -> None:
        self.catalog = catalog
        tuned = [name for name in tasks if name in catalog.tasks and catalog.tasks[name].tuning is not None]
        self.candidates: dict[str, PromptVersion] = {}
        if registry is not None and tuned:
            for name, candidate in registry.with_status("candidate", tuned).items():
                if candidate.base_version == catalog.base_versions.get(name):
                    self.candidates[name] = candidate

    def choose(self, task: TaskSpec, key: str) -> tuple[TaskSpec, str, bool]:
        """(the task spec to run, its prompt version, whether this is a canary execution)."""
        candidate = self.candidates.get(task.name)
        if candidate is not None and task.tuning is not None and in_canary(key, task.tuning.canary_share):
            return with_version(task, candidate), candidate.version, True
        return task, self.catalog.prompt_versions[task.name], False
