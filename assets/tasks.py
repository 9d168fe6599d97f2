"""Task assets: every catalog task is a software-defined asset a person can materialize.

Materializing a task (the UI's Materialize, a workflow job, `dagster asset materialize`,
`agent-pipelines task run-now`) runs its op: the selected tasks go to the same dispatcher as
scheduled work, now, and each result is yielded as the task's materialization (with its check
results) the moment it is recorded. Scheduled, event and upstream executions are carried by the
dispatch jobs instead (see `jobs.dispatch`) and appear as materializations of these same assets.

An event task asks for a sample event in its config; a downstream task reads exactly what its
upstream produced in the same run, or that task's newest output when launched alone. A manual
run fails when one of its executions failed (a person asked for it and should see it), after
every other result has been yielded.
"""


from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.templates import event_payload_fields
from agent_pipelines.grouping import TaskGroup, Workflow, find_workflows, group_tasks
from agent_pipelines.prompts.reevaluation import reevaluate
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.plans import manual_plan
from agent_pipelines.scheduling.publication import SUCCEEDED_CHECK, as_check_result
from agent_pipelines.scheduling.scheduler import MANUAL_JOB
from agent_pipelines.store import StateStore, StoredEvent, status
from agent_pipelines.task_status import trigger_text
from jobs.dispatch import carry
from resources.agents import AgentsResource
from resources.store import StoreResource

CHECK_DESCRIPTIONS = {
    SUCCEEDED_CHECK: "The task's latest execution succeeded (failed, skipped or retrying ones say why).",
    "json_schema": "The output is JSON valid against the task's schema.",
    "must_match": "The output contains every required pattern.",
    "must_not_match": "The output contains none of the forbidden patterns.",
    "max_latency": "The agent answered within the latency limit.",
    "max_tokens": "The exchange used at most the token limit.",
    "judge": "An evaluator agent scored the output at or above the threshold.",
}


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


def task_asset_spec(catalog: Catalog, task: TaskSpec, group_name: str) -> dg.AssetSpec:
    """The asset of a task. Its definition metadata is kept to three entries: every entry of
    every asset is re-sent to the daemon each minute, and at 10,000 tasks that adds up."""
    agent = catalog.agents[task.agent]  # type: ignore[index]
    source = catalog.locations.get(f"task:{task.name}")
    retries = task.retries
    settings = [
        f"**agent** {agent.name} ({agent.kind}, {agent.model or 'default model'})",
        f"**trigger** {trigger_text(task)}" + ("" if task.enabled else " (disabled)"),
        f"**session** {task.session}",
        f"**retries** {retries.count} x {retries.backoff} from {retries.delay:g}s"
        + (f" until {retries.until if retries.until == 'next_due' else f'{retries.until:g}s'}" if retries.until else "")
        + f"; idempotent: {task.idempotent}",
        f"**timeout** {task.timeout or agent.timeout:g}s",
    ]
    metadata: dict[str, Any] = {
        "prompt_template": dg.MetadataValue.md(f"```jinja\n{task.prompt}\n```"),
        "settings": dg.MetadataValue.md("  \n".join(settings)),
    }
    if source is not None:
        metadata["catalog_source"] = dg.MetadataValue.text(f"{source.file}:{source.line}")
    return dg.AssetSpec(
        key=task.name,
        description=task.description or task.prompt.strip().splitlines()[0][:200],
        deps=task.depends_on,
        group_name=group_name,
        code_version=catalog.prompt_versions[task.name],
        owners=[task.owner],
        tags={**task.tags, tags.AGENT: agent.name},
        kinds={agent.kind},
        metadata=metadata,
        skippable=True,
    )


def task_check_specs(task: TaskSpec) -> list[dg.AssetCheckSpec]:
    names = [SUCCEEDED_CHECK, *(task.checks.names() if task.checks is not None else [])]
    return [dg.AssetCheckSpec(name=name, asset=task.name, description=CHECK_DESCRIPTIONS[name]) for name in names]


def _config_schema(catalog: Catalog, task_names: Sequence[str]) -> dict[str, dg.Field]:
    """Per task: its variables with their defaults (the launchpad scaffolds them), and for an
    event task the sample event a manual run renders (required: refused before the run starts)."""
    schema: dict[str, dg.Field] = {}
    for name in task_names:
        task = catalog.tasks[name]
        fields: dict[str, dg.Field] = {}
        if task.variables:
            defaults = {key: dg.Field(dg.Any, is_required=False, default_value=value) for key, value in task.variables.items()}
            fields["variables"] = dg.Field(dg.Permissive(defaults), is_required=False)
        if task.events:
            subscription = task.events[0]
            reads = event_payload_fields(task.prompt + (task.system or ""))
            fields["event"] = dg.Field(
                {
                    "source": dg.Field(str, default_value=subscription.source),
                    "type": dg.Field(str, default_value=next((t for t in subscription.types() if t != "*"), "manual")),
                    # The fields the prompt reads are required by name: a launch without them
                    # is refused before the run starts, naming what is missing.
                    "payload": dg.Field(
                        dg.Permissive({field: dg.Field(dg.Any, description="read by the prompt") for field in reads}),
                        is_required=True,
                        description="the event's JSON body" + (f"; the prompt reads {', '.join(reads)}" if reads else ""),
                    ),
                },
                description=f"{name} is started by events: a manual run needs a sample event to render its prompt.",
            )
        if fields:
            schema[name] = dg.Field(fields, is_required=bool(task.events), description=f"Overrides for task {name!r} in this run.")
    return schema


def build_task_group_asset(catalog: Catalog, group: TaskGroup) -> dg.AssetsDefinition:
    group_name = group.workflow or "agent_tasks"
    specs = [task_asset_spec(catalog, catalog.tasks[name], group_name) for name in group.tasks]
    check_specs = [check for name in group.tasks for check in task_check_specs(catalog.tasks[name])]

    @dg.multi_asset(
        name=group.op_name,
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        pool=f"agent_{group.agent}",
        config_schema=_config_schema(catalog, group.tasks),
        op_tags={tags.AGENT: group.agent},
        description=f"Runs {', '.join(group.tasks)} on agent {group.agent} now.",
    )
    def _run_tasks(context: dg.AssetExecutionContext, store: StoreResource, agents: AgentsResource) -> Iterator[Any]:
        selected = [catalog.tasks[n] for n in group.tasks if dg.AssetKey(n) in context.selected_asset_keys]
        step = _ManualStep(context, catalog, store.for_instance(context.instance), agents)
        yield from step.checks_alone()
        if selected:
            yield from step.run(selected)

    return _run_tasks


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


class _ManualStep:
    def __init__(self, context: dg.AssetExecutionContext, catalog: Catalog, store: StateStore, agents: AgentsResource) -> None:
        self.context = context
        self.catalog = catalog
        self.store = store
        self.agents = agents
        self.dagster_run = context.run
        self.config: Mapping[str, Any] = context.op_execution_context.op_config or {}

    def checks_alone(self) -> Iterator[dg.AssetCheckResult]:
        """Checks selected without their asset (the UI's "Execute" on a check): evaluated again
        on the task's latest recorded execution, without calling its agent."""
        selected_assets = set(self.context.selected_asset_keys)
        by_task: dict[str, list[str]] = {}
        for key in self.context.selected_asset_check_keys:
            if key.asset_key not in selected_assets:
                by_task.setdefault(key.asset_key.to_user_string(), []).append(key.name)
        for name, checks in by_task.items():
            for outcome in reevaluate(self.catalog, self.store, self.catalog.tasks[name], checks, self.agents.pool):
                yield dg.AssetCheckResult(
                    asset_key=name,
                    check_name=outcome.name,
                    passed=outcome.passed,
                    severity=dg.AssetCheckSeverity.ERROR if outcome.name == SUCCEEDED_CHECK else dg.AssetCheckSeverity.WARN,
                    description=outcome.details[:1000],
                    metadata={"evaluated": dg.MetadataValue.text("again, on the latest recorded execution")},
                )

    def run(self, selected: list[TaskSpec]) -> Iterator[Any]:
        self._tag_run(selected)
        yield from self._missing_upstream_first(selected)
        now = SYSTEM_CLOCK.now()
        runnable, blocked = self._upstream(selected)
        for task, reason in blocked:
            self.context.log.error(f"{task.name}: {reason}")
            yield dg.AssetCheckResult(asset_key=task.name, check_name=SUCCEEDED_CHECK, passed=False, description=reason)
        selection = {key.to_user_string() for key in self.context.selected_asset_keys}
        plan = manual_plan(
            self.catalog,
            [task for task, _keys in runnable],
            root_run_id=self.dagster_run.tags.get(tags.ROOT_RUN_ID, self.dagster_run.run_id),
            now=now,
            selection=selection,
            events={task.name: event for task in selected if (event := self._sample_event(task, now)) is not None},
            variables={name: (entry or {}).get("variables") or {} for name, entry in self.config.items()},
            upstream={task.name: keys for task, keys in runnable},
        )
        own = {task.name for task in selected}
        failed: list[str] = [task.name for task, _ in blocked]
        checks = set(self.context.selected_asset_check_keys)
        answered: set[dg.AssetCheckKey] = set()
        for event in carry(self.context.op_execution_context, self.catalog, self.store, self.agents, plan):
            asset = event.asset_key.to_user_string()
            if asset not in own:
                yield event  # a follower outside the selection (`on_upstream`)
            elif isinstance(event, dg.AssetMaterialization):
                yield dg.MaterializeResult(asset_key=event.asset_key, metadata=event.metadata, tags=event.tags)
            else:
                key = dg.AssetCheckKey(event.asset_key, event.check_name)
                interim = event.check_name == SUCCEEDED_CHECK and event.metadata["status"].value == status.RETRYING
                if event.check_name == SUCCEEDED_CHECK and not event.passed and not interim:
                    failed.append(f"{asset}: {event.description}")
                if interim or key not in checks or key in answered:
                    yield event  # an evaluation before the final one (a failed attempt that is retried)
                    continue
                answered.add(key)
                yield as_check_result(event)
        if failed:
            raise dg.Failure(description=f"{len(failed)} execution(s) did not succeed: " + "; ".join(failed), allow_retries=False)

    def _missing_upstream_first(self, selected: list[TaskSpec]) -> Iterator[Any]:
        """A task launched alone whose upstream never produced an output: its upstream runs
        first, in this run (upstream-first, one task at a time), so the launch works on a fresh
        instance as on a busy one."""
        in_run = {key.to_user_string() for key in self.context.selected_asset_keys}
        missing: list[str] = []
        frontier = [dep for task in selected for dep in task.depends_on if dep not in in_run]
        while frontier:
            name = frontier.pop()
            if name in missing or name in in_run or self.store.latest_success(name) is not None:
                continue
            missing.append(name)
            frontier.extend(self.catalog.tasks[name].depends_on)
        order = [name for name in self.catalog.tasks if name in missing]  # upstream first
        root = self.dagster_run.tags.get(tags.ROOT_RUN_ID, self.dagster_run.run_id)
        for name in order:
            self.context.log.info(f"{name} has no output yet: running it first, for the tasks of this run that read it")
            plan = manual_plan(self.catalog, [self.catalog.tasks[name]], root_run_id=root, now=SYSTEM_CLOCK.now(), selection=in_run)
            yield from carry(self.context.op_execution_context, self.catalog, self.store, self.agents, plan)

    def _upstream(self, selected: list[TaskSpec]) -> tuple[list[tuple[TaskSpec, dict[str, str]]], list[tuple[TaskSpec, str]]]:
        """For each task, the upstream executions it reads: the ones this run produced when its
        upstream is in the run, else (absent here) the newest output the dispatcher finds."""
        in_run = {key.to_user_string() for key in self.context.selected_asset_keys}
        runnable, blocked = [], []
        for task in selected:
            keys: dict[str, str] = {}
            reason = None
            for dep in task.depends_on:
                if dep not in in_run:
                    continue
                produced = self.store.latest_success(dep, run_id=self.dagster_run.run_id)
                if produced is None:
                    reason = f"its upstream task {dep!r} produced no output in this run: nothing was sent"
                    break
                keys[dep] = produced.idempotency_key
            if reason is None:
                runnable.append((task, keys))
            else:
                blocked.append((task, reason))
        return runnable, blocked

    def _sample_event(self, task: TaskSpec, now: Any) -> StoredEvent | None:
        entry = (self.config.get(task.name) or {}).get("event")
        if not task.events or not entry:
            return None
        return StoredEvent(
            seq=0,
            event_id=f"manual:{self.dagster_run.run_id}",
            source=entry["source"],
            type=entry["type"],
            payload=dict(entry.get("payload") or {}),
            received_at=now,
        )

    def _tag_run(self, selected: list[TaskSpec]) -> None:
        """Runs launched by hand say what they carry, like the scheduler's runs do."""
        existing: Mapping[str, str] = self.dagster_run.tags
        new = {tags.TRIGGER: "manual"} if tags.TRIGGER not in existing else {}
        names = sorted(t.name for t in selected)
        if tags.TASKS not in existing:
            new[tags.TASKS] = tags.summary(names)
            new[tags.AGENTS] = tags.summary(sorted({t.agent or "" for t in selected}))
        if len(selected) == 1 and tags.TASK not in existing:
            task = selected[0]
            new.update({tags.TASK: task.name, tags.AGENT: task.agent or "", tags.OWNER: tags.owner_label(task.owner)})
        if new:
            self.context.instance.add_run_tags(self.dagster_run.run_id, new)


def build_task_definitions(catalog: Catalog) -> dg.Definitions:
    workflows = find_workflows(catalog)
    assets = [build_task_group_asset(catalog, group) for group in group_tasks(catalog, workflows)]
    jobs = [_workflow_job(workflow) for workflow in workflows]
    if catalog.regular_tasks:
        jobs.append(
            dg.define_asset_job(
                MANUAL_JOB,
                selection=dg.AssetSelection.assets(*catalog.regular_tasks),
                description="Materialize tasks by hand (pick them in the launchpad); `agent-pipelines task run-now` uses it too.",
                tags={tags.TRIGGER: "manual"},
            )
        )
    return dg.Definitions(assets=assets, jobs=jobs)


def _workflow_job(workflow: Workflow) -> Any:
    return dg.define_asset_job(
        workflow.job_name,
        selection=dg.AssetSelection.assets(*workflow.tasks),
        description=f"Workflow {' -> '.join(workflow.tasks)}",
        tags={tags.WORKFLOW: workflow.name},
    )
