"""The tasks behind Dagster's names: asset keys, jobs, runs, backfills, schedules and sensors,
read from the webserver's own workspace and instance and from the catalog.

An asset is a task when its key is a catalog task's name (or a batch task's `<name>_all`); the
owner comes from the catalog. A stored run carries its tasks in its asset selection and in the
`agent_pipelines/task(s)` tags the platform sets; a run whose tags were cut short
(`a, b (+12 more)`) cannot be attributed. Anything that cannot be attributed returns None, which
the gate treats as "needs admin".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from agent_pipelines import tags
from agent_pipelines.access.decisions import TaskRef
from agent_pipelines.access.graphql_mutations import AssetPath

BATCH_COMBINED_SUFFIX = "_all"  # assets.batch.combined_key
SHARDS_SUFFIX = "_shards"  # assets.batch.partitions_for


class CatalogTargets:
    """Asset keys -> tasks, from a catalog provider (called per lookup, so edits apply)."""

    def __init__(self, catalog: Callable[[], Any]) -> None:
        self._catalog = catalog

    def _owner(self, name: str) -> str | None:
        catalog = self._catalog()
        spec = catalog.tasks.get(name) if catalog is not None else None
        return spec.owner if spec is not None else None

    def task_of_asset(self, key: AssetPath) -> TaskRef | None:
        if len(key) != 1:
            return None
        name = key[0]
        owner = self._owner(name)
        if owner is not None:
            return TaskRef(name, owner)
        if name.endswith(BATCH_COMBINED_SUFFIX):
            base = name.removesuffix(BATCH_COMBINED_SUFFIX)
            owner = self._owner(base)
            if owner is not None:
                return TaskRef(base, owner)
        return None

    def tasks_of_assets(self, keys: Sequence[AssetPath]) -> list[TaskRef] | None:
        if not keys:
            return None
        found = [self.task_of_asset(tuple(key)) for key in keys]
        if any(task is None for task in found):
            return None
        return sorted(set(found))  # type: ignore[arg-type]

    def tasks_of_partitions_def(self, name: str) -> list[TaskRef] | None:
        if not name.endswith(SHARDS_SUFFIX):
            return None
        base = name.removesuffix(SHARDS_SUFFIX)
        owner = self._owner(base)
        return [TaskRef(base, owner)] if owner is not None else None

    def tasks_of_tags(self, run_tags: Mapping[str, str]) -> list[TaskRef] | None:
        """From the tags the platform puts on its runs; None when absent or cut short."""
        names: list[str] = []
        if tags.TASK in run_tags:
            names.append(run_tags[tags.TASK])
        if tags.TASKS in run_tags:
            listed = run_tags[tags.TASKS]
            if "(+" in listed:
                return None
            names.extend(n.strip() for n in listed.split(",") if n.strip())
        if not names:
            return None
        found: list[TaskRef] = []
        for name in names:
            owner = self._owner(name)
            if owner is None and tags.OWNER in run_tags and len(set(names)) == 1:
                label = run_tags[tags.OWNER]  # a task since removed from the catalog
                owner = label if "@" in label else f"team:{label}"
            if owner is None:
                return None
            found.append(TaskRef(name, owner))
        return sorted(set(found))


class WorkspaceTargets(CatalogTargets):
    """`graphql_mutations.Targets` over a Dagster workspace process context."""

    def __init__(self, process_context: Any, catalog: Callable[[], Any]) -> None:
        super().__init__(catalog)
        self._context = process_context

    @property
    def instance(self) -> Any:
        return self._context.instance

    def _repositories(self, location: str | None = None, repository: str | None = None) -> Iterator[Any]:
        entries = self._context.get_current_workspace().code_location_entries
        for name, entry in entries.items():
            if location is not None and name != location or entry.code_location is None:
                continue
            for repo_name, repo in entry.code_location.get_repositories().items():
                if repository is None or repo_name == repository:
                    yield repo

    def assets_of_job(self, location: str | None, repository: str | None, job: str) -> list[AssetPath] | None:
        for repo in self._repositories(location, repository):
            if repo.has_job(job):
                keys = [tuple(key.path) for key in repo.get_asset_keys_in_job(job)]
                return keys or None
        return None

    def tasks_of_run(self, run_id: str) -> list[TaskRef] | None:
        run = self.instance.get_run_by_id(run_id) if run_id else None
        if run is None:
            return None
        parts: list[list[TaskRef]] = []
        if run.asset_selection:
            by_assets = self.tasks_of_assets([tuple(k.path) for k in run.asset_selection])
            if by_assets is None:
                return None
            parts.append(by_assets)
        if tags.TASK in run.tags or tags.TASKS in run.tags:
            by_tags = self.tasks_of_tags(run.tags)
            if by_tags is None:
                return None
            parts.append(by_tags)
        if not parts:
            keys = self.assets_of_job(None, None, run.job_name)
            return self.tasks_of_assets(keys) if keys else None
        return sorted({t for part in parts for t in part})

    def tasks_of_backfill(self, backfill_id: str) -> list[TaskRef] | None:
        backfill = self.instance.get_backfill(backfill_id) if backfill_id else None
        if backfill is None:
            return None
        if backfill.asset_selection:
            return self.tasks_of_assets([tuple(k.path) for k in backfill.asset_selection])
        job = backfill.job_name
        keys = self.assets_of_job(None, None, job) if job else None
        return self.tasks_of_assets(keys) if keys else None

    def tasks_of_instigator(self, kind: str, selector: Mapping[str, Any] | None, instigator_id: str | None) -> list[TaskRef] | None:
        found = self._find_instigator(kind, selector, instigator_id)
        if found is None:
            return None
        repo, instigator = found
        if instigator.asset_selection is not None:
            try:
                keys = instigator.asset_selection.resolve(repo.asset_graph)
            except Exception:  # noqa: BLE001 - a selection we cannot resolve is not attributable
                return None
            return self.tasks_of_assets([tuple(k.path) for k in keys])
        jobs = [instigator.job_name] if kind == "schedule" else [t.job_name for t in instigator.get_targets()]
        parts: list[list[TaskRef]] = []
        for job in jobs:
            keys = self.assets_of_job(None, None, job) if job else None
            tasks = self.tasks_of_assets(keys) if keys else None
            if tasks is None:
                return None  # an op job (our dispatch and control jobs): every task, so admin
            parts.append(tasks)
        return sorted({t for part in parts for t in part}) if parts else None

    def _find_instigator(self, kind: str, selector: Mapping[str, Any] | None, instigator_id: str | None) -> tuple[Any, Any] | None:
        name_key = "scheduleName" if kind == "schedule" else "sensorName"
        wanted_ids: set[str] = set()
        if instigator_id:
            wanted_ids = set(instigator_id.split("::")) if "::" in instigator_id else {instigator_id}
        location = selector.get("repositoryLocationName") if selector else None
        repository = selector.get("repositoryName") if selector else None
        for repo in self._repositories(location, repository):
            items = repo.get_schedules() if kind == "schedule" else repo.get_sensors()
            for item in items:
                if selector is not None and item.name == selector.get(name_key):
                    return repo, item
                if wanted_ids and wanted_ids & {item.selector_id, item.get_remote_origin_id()}:
                    return repo, item
        return None
