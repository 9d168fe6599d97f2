"""What a GraphQL request would change: its mutation fields, the tasks each one touches, and
the role each needs.

The document is parsed with graphql-core (what the webserver itself parses with), fragments
and variables resolved, and every mutation operation in it is considered, whichever one
`operationName` picks: a request is judged by everything it could do. The tasks come from
`Targets` (the workspace, the instance and the catalog): a launch by its job and asset
selection, a re-execution or termination by the parent run's selection and tags read from the
instance, a schedule or sensor by the assets its job targets. Client-supplied run tags never
decide: they are the caller's words. A mutation missing from `MUTATIONS`, or one whose tasks
cannot be determined, needs admin on every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
)
from graphql.utilities import value_from_ast_untyped

from agent_pipelines.access.decisions import Role, TaskRef

AssetPath = tuple[str, ...]
#: Documents larger than this are refused before parsing (the UI's largest are a few KB).
MAX_DOCUMENT_CHARS = 200_000


class Targets(Protocol):
    """Where the gate looks up what a mutation touches; None: cannot be determined."""

    def tasks_of_assets(self, keys: Sequence[AssetPath]) -> list[TaskRef] | None: ...

    def assets_of_job(self, location: str | None, repository: str | None, job: str) -> list[AssetPath] | None: ...

    def tasks_of_run(self, run_id: str) -> list[TaskRef] | None: ...

    def tasks_of_backfill(self, backfill_id: str) -> list[TaskRef] | None: ...

    def tasks_of_instigator(self, kind: str, selector: Mapping[str, Any] | None, instigator_id: str | None) -> list[TaskRef] | None: ...

    def tasks_of_partitions_def(self, name: str) -> list[TaskRef] | None: ...


@dataclass(frozen=True)
class MutationCall:
    name: str  # the schema field, e.g. launchRun (aliases resolved)
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Touch:
    """One mutation call judged: the audit action, the role needed and on which tasks."""

    call: MutationCall
    action: str
    role: Role
    tasks: list[TaskRef] | None  # None: unknown, so admin on every task
    audited: bool = True
    summary: dict[str, Any] = field(default_factory=dict)


class UnreadableRequest(Exception):
    """A document the gate will not pass on (too large, or not a GraphQL document)."""


# --- parsing ---------------------------------------------------------------------------------


def mutation_calls(query: str, variables: Mapping[str, Any] | None) -> list[MutationCall]:
    """Every top-level field of every mutation operation in `query`."""
    if "mutation" not in query.lower():
        return []  # fast path for reads: a mutation operation needs the keyword
    if len(query) > MAX_DOCUMENT_CHARS:
        raise UnreadableRequest(f"GraphQL document over {MAX_DOCUMENT_CHARS:,} characters")
    try:
        document = parse(query, no_location=True)
    except GraphQLError as exc:
        raise UnreadableRequest(f"not a GraphQL document: {exc.message}") from None
    return calls_in(document, variables or {})


def has_mutation(query: str) -> bool:
    """For the websocket, which only serves subscriptions: a mutation there is refused, and so
    is a document that cannot be read."""
    if "mutation" not in query.lower():
        return False
    try:
        document = parse(query, no_location=True)
    except GraphQLError:
        return True
    return any(isinstance(d, OperationDefinitionNode) and d.operation == OperationType.MUTATION for d in document.definitions)


def calls_in(document: DocumentNode, variables: Mapping[str, Any]) -> list[MutationCall]:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    calls: list[MutationCall] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and definition.operation == OperationType.MUTATION:
            for node in _fields(definition.selection_set, fragments, set()):
                arguments = {arg.name.value: value_from_ast_untyped(arg.value, dict(variables)) for arg in node.arguments or ()}
                calls.append(MutationCall(node.name.value, arguments))
    return calls


def _fields(selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode], seen: set[str]) -> list[FieldNode]:
    """Top-level fields, through fragment spreads and inline fragments (directives ignored:
    `@skip` could be false, so a skipped field still counts)."""
    found: list[FieldNode] = []
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            found.append(selection)
        elif isinstance(selection, InlineFragmentNode):
            found.extend(_fields(selection.selection_set, fragments, seen))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                found.extend(_fields(fragments[name].selection_set, fragments, seen | {name}))
    return found


# --- what each mutation touches ---------------------------------------------------------------


def _keys(items: Any) -> list[AssetPath]:
    """`[{path: [..]}]` (AssetKeyInput) or `[{assetKey: {path: [..]}}]` -> asset paths."""
    keys: list[AssetPath] = []
    for item in items or []:
        if isinstance(item, Mapping) and "assetKey" in item:
            item = item["assetKey"]
        if isinstance(item, Mapping) and isinstance(item.get("path"), list):
            keys.append(tuple(str(p) for p in item["path"]))
    return keys


def _union(*parts: list[TaskRef] | None) -> list[TaskRef] | None:
    if any(part is None for part in parts):
        return None
    return sorted({task for part in parts for task in part or []})


def _launch_tasks(targets: Targets, params: Any) -> list[TaskRef] | None:
    if not isinstance(params, Mapping):
        return None
    selector = params.get("selector") or {}
    if not isinstance(selector, Mapping):
        return None
    keys = _keys(selector.get("assetSelection"))
    if not keys:
        job = selector.get("jobName") or selector.get("pipelineName")
        if not job:
            return None
        found = targets.assets_of_job(selector.get("repositoryLocationName"), selector.get("repositoryName"), str(job))
        if not found:
            return None  # an op job: which tasks it runs is in its config, not checkable here
        keys = found
    return targets.tasks_of_assets(keys)


def _reexecution_tasks(targets: Targets, args: Mapping[str, Any]) -> list[TaskRef] | None:
    reexecution = args.get("reexecutionParams") or {}
    execution = args.get("executionParams") or {}
    metadata = execution.get("executionMetadata") or {} if isinstance(execution, Mapping) else {}
    parent = (reexecution.get("parentRunId") if isinstance(reexecution, Mapping) else None) or metadata.get("parentRunId")
    if not parent:
        return None
    parts = [targets.tasks_of_run(str(parent))]
    if execution:
        parts.append(_launch_tasks(targets, execution))
    return _union(*parts)


def _backfill_tasks(targets: Targets, params: Any) -> list[TaskRef] | None:
    if not isinstance(params, Mapping):
        return None
    keys = _keys(params.get("assetSelection")) + _keys(params.get("partitionsByAssets"))
    if keys:
        return targets.tasks_of_assets(keys)
    selector = params.get("selector") or {}
    name = str(selector.get("partitionSetName") or "") if isinstance(selector, Mapping) else ""
    if not name:
        return None
    repository = selector.get("repositorySelector") or {}
    job = name.removesuffix("_partition_set")
    found = targets.assets_of_job(repository.get("repositoryLocationName"), repository.get("repositoryName"), job)
    return targets.tasks_of_assets(found) if found else None


def _runs(targets: Targets, run_ids: Sequence[Any]) -> list[TaskRef] | None:
    return _union(*[targets.tasks_of_run(str(r)) for r in run_ids]) if run_ids else None


def _instigator(kind: str, selector_arg: str | None, id_args: Sequence[str] = ()) -> Callable[[Targets, Mapping[str, Any]], list[TaskRef] | None]:
    def tasks(targets: Targets, args: Mapping[str, Any]) -> list[TaskRef] | None:
        selector = args.get(selector_arg) if selector_arg else None
        instigator_id = next((str(args[a]) for a in id_args if args.get(a)), None)
        return targets.tasks_of_instigator(kind, selector if isinstance(selector, Mapping) else None, instigator_id)

    return tasks


Resolver = Callable[[Targets, Mapping[str, Any]], "list[TaskRef] | None"]


@dataclass(frozen=True)
class Rule:
    action: str
    role: Role
    tasks: Resolver | None  # None: a platform-wide mutation (judged on every task)
    audited: bool = True


def _none(targets: Targets, args: Mapping[str, Any]) -> list[TaskRef] | None:
    return None


_LAUNCH = Rule("ui.launch", Role.operator, lambda t, a: _launch_tasks(t, a.get("executionParams")))

#: Every mutation of Dagster 1.13's schema; anything else needs admin.
MUTATIONS: dict[str, Rule] = {
    "launchPipelineExecution": _LAUNCH,
    "launchRun": _LAUNCH,
    "launchMultipleRuns": Rule(
        "ui.launch", Role.operator, lambda t, a: _union(*[_launch_tasks(t, p) for p in a.get("executionParamsList") or [None]])
    ),
    "launchPipelineReexecution": Rule("ui.launchRunReexecution", Role.operator, _reexecution_tasks),
    "launchRunReexecution": Rule("ui.launchRunReexecution", Role.operator, _reexecution_tasks),
    "launchPartitionBackfill": Rule("ui.launchPartitionBackfill", Role.operator, lambda t, a: _backfill_tasks(t, a.get("backfillParams"))),
    "resumePartitionBackfill": Rule("ui.resumePartitionBackfill", Role.operator, lambda t, a: t.tasks_of_backfill(str(a.get("backfillId") or ""))),
    "cancelPartitionBackfill": Rule("ui.cancelPartitionBackfill", Role.operator, lambda t, a: t.tasks_of_backfill(str(a.get("backfillId") or ""))),
    "reexecutePartitionBackfill": Rule(
        "ui.reexecutePartitionBackfill", Role.operator,
        lambda t, a: t.tasks_of_backfill(str((a.get("reexecutionParams") or {}).get("parentRunId") or "")),
    ),
    "terminatePipelineExecution": Rule("ui.terminateRun", Role.operator, lambda t, a: _runs(t, [a.get("runId")])),
    "terminateRun": Rule("ui.terminateRun", Role.operator, lambda t, a: _runs(t, [a.get("runId")])),
    "terminateRuns": Rule("ui.terminateRuns", Role.operator, lambda t, a: _runs(t, a.get("runIds") or [])),
    "freeConcurrencySlotsForRun": Rule("ui.freeConcurrencySlotsForRun", Role.operator, lambda t, a: _runs(t, [a.get("runId")])),
    "deletePipelineRun": Rule("ui.deleteRun", Role.admin, lambda t, a: _runs(t, [a.get("runId")])),
    "deleteRun": Rule("ui.deleteRun", Role.admin, lambda t, a: _runs(t, [a.get("runId")])),
    "startSchedule": Rule("ui.startSchedule", Role.owner, _instigator("schedule", "scheduleSelector")),
    "stopRunningSchedule": Rule("ui.stopRunningSchedule", Role.owner, _instigator("schedule", None, ("id", "scheduleSelectorId", "scheduleOriginId"))),
    "resetSchedule": Rule("ui.resetSchedule", Role.owner, _instigator("schedule", "scheduleSelector")),
    "scheduleDryRun": Rule("ui.scheduleDryRun", Role.owner, _instigator("schedule", "selectorData")),
    "startSensor": Rule("ui.startSensor", Role.owner, _instigator("sensor", "sensorSelector")),
    "stopSensor": Rule("ui.stopSensor", Role.owner, _instigator("sensor", None, ("id", "jobSelectorId", "jobOriginId"))),
    "resetSensor": Rule("ui.resetSensor", Role.owner, _instigator("sensor", "sensorSelector")),
    "setSensorCursor": Rule("ui.setSensorCursor", Role.owner, _instigator("sensor", "sensorSelector")),
    # A dry run evaluates the sensor's code, and ours claim work when they run.
    "sensorDryRun": Rule("ui.sensorDryRun", Role.owner, _instigator("sensor", "selectorData")),
    "reportRunlessAssetEvents": Rule(
        "ui.reportRunlessAssetEvents", Role.owner, lambda t, a: t.tasks_of_assets(_keys([(a.get("eventParams") or {}).get("assetKey")]))
    ),
    "reportAssetCheckEvaluations": Rule(
        "ui.reportAssetCheckEvaluations", Role.owner, lambda t, a: t.tasks_of_assets(_keys([(a.get("eventParams") or {}).get("assetKey")]))
    ),
    "addDynamicPartition": Rule("ui.addDynamicPartition", Role.operator, lambda t, a: t.tasks_of_partitions_def(str(a.get("partitionsDefName") or ""))),
    "deleteDynamicPartitions": Rule("ui.deleteDynamicPartitions", Role.admin, lambda t, a: t.tasks_of_partitions_def(str(a.get("partitionsDefName") or ""))),
    "wipeAssets": Rule("ui.wipeAssets", Role.admin, lambda t, a: t.tasks_of_assets(_keys(a.get("assetPartitionRanges")))),
    # Re-reading code is harmless and needed after every catalog change: any operator may.
    "reloadRepositoryLocation": Rule("ui.reloadRepositoryLocation", Role.operator, None),
    "reloadWorkspace": Rule("ui.reloadWorkspace", Role.operator, None),
    "shutdownRepositoryLocation": Rule("ui.shutdownRepositoryLocation", Role.admin, None),
    "setAutoMaterializePaused": Rule("ui.setAutoMaterializePaused", Role.admin, None),
    "setConcurrencyLimit": Rule("ui.setConcurrencyLimit", Role.admin, None),
    "deleteConcurrencyLimit": Rule("ui.deleteConcurrencyLimit", Role.admin, None),
    "freeConcurrencySlots": Rule("ui.freeConcurrencySlots", Role.admin, None),
    "setAppManagedComponent": Rule("ui.setAppManagedComponent", Role.admin, None),
    "deleteAppManagedComponent": Rule("ui.deleteAppManagedComponent", Role.admin, None),
    "refreshComponentState": Rule("ui.refreshComponentState", Role.admin, None),
    # The browser's own bookkeeping: changes nothing of the platform's.
    "logTelemetry": Rule("ui.logTelemetry", Role.viewer, None, audited=False),
    "setNuxSeen": Rule("ui.setNuxSeen", Role.viewer, None, audited=False),
}

#: Platform-wide mutations that any holder of the role on *some* task may make.
ANY_TASK = frozenset({"reloadRepositoryLocation", "reloadWorkspace", "logTelemetry", "setNuxSeen"})


def judge(call: MutationCall, targets: Targets) -> Touch:
    rule = MUTATIONS.get(call.name)
    if rule is None:
        return Touch(call, f"ui.{call.name}", Role.admin, None, summary={"unknown_mutation": True})
    tasks = rule.tasks(targets, call.arguments) if rule.tasks is not None else None
    return Touch(call, rule.action, rule.role, tasks, rule.audited, summary=_summary(call))


def _summary(call: MutationCall) -> dict[str, Any]:
    """What the audit entry keeps of the arguments: identifiers, never run config."""
    args = call.arguments
    out: dict[str, Any] = {"mutation": call.name}
    params = args.get("executionParams")
    if isinstance(params, Mapping):
        selector = params.get("selector") or {}
        out["job"] = selector.get("jobName") or selector.get("pipelineName")
        if selector.get("assetSelection"):
            out["assets"] = ["/".join(k) for k in _keys(selector["assetSelection"])][:50]
    for name in ("runId", "runIds", "backfillId", "partitionsDefName", "repositoryLocationName", "id"):
        if args.get(name):
            out[name] = args[name] if not isinstance(args[name], list) else args[name][:50]
    for name in ("scheduleSelector", "sensorSelector", "selectorData"):
        if isinstance(args.get(name), Mapping):
            out[name] = args[name].get("scheduleName") or args[name].get("sensorName")
    reexecution = args.get("reexecutionParams")
    if isinstance(reexecution, Mapping):
        out["parentRunId"] = reexecution.get("parentRunId")
        out["strategy"] = reexecution.get("strategy")
    return out
