"""Which prompt an execution uses: the registry's active version, or for a share of executions
the candidate.

The code location loads the catalog as written (no database at import); registry versions are
looked up here, when a run starts, so a promotion applies to the next run without a reload. The
choice is a pure function of the execution's idempotency key, so every attempt of one execution
(and a re-execution of it) uses the same prompt version.
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
    """Loads the active and candidate versions of a run's tasks once, then answers per execution."""

    def __init__(self, catalog: Catalog, registry: PromptRegistry | None, tasks: Iterable[str]) -> None:
        self.catalog = catalog
        names = [name for name in tasks if name in catalog.tasks]
        self.actives: dict[str, PromptVersion] = {}
        self.candidates: dict[str, PromptVersion] = {}
        if registry is None or not names:
            return
        for name, active in registry.with_status("active", names).items():
            base = catalog.base_versions.get(name)
            # A version tuned from what the catalog declares applies; a person's edit of the
            # catalog since (another base) wins over it.
            if active.base_version == base and active.version != base:
                self.actives[name] = active
        tuned = [name for name in names if catalog.tasks[name].tuning is not None]
        for name, candidate in registry.with_status("candidate", tuned).items() if tuned else ():
            if candidate.base_version == catalog.base_versions.get(name):
                self.candidates[name] = candidate

    def version_of(self, task: str) -> str:
        """The version a non-canary execution of `task` uses."""
        active = self.actives.get(task)
        return active.version if active is not None else self.catalog.prompt_versions[task]

    def active(self, task: TaskSpec) -> tuple[TaskSpec, str]:
        """The task as its active version makes it, and that version."""
        active = self.actives.get(task.name)
        if active is not None:
            return with_version(task, active), active.version
        return task, self.catalog.prompt_versions[task.name]

    def choose(self, task: TaskSpec, key: str) -> tuple[TaskSpec, str, bool]:
        """(the task spec to run, its prompt version, whether this is a canary execution)."""
        candidate = self.candidates.get(task.name)
        if candidate is not None and task.tuning is not None and in_canary(key, task.tuning.canary_share):
            return with_version(task, candidate), candidate.version, True
        spec, version = self.active(task)
        return spec, version, False
