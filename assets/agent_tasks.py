"""Task assets: each catalog task is a software-defined asset whose compute calls its agent.

Several tasks can share one op (a `multi_asset` of up to ~100 specs, see
`agent_pipelines.grouping`): one step then sends all of its selected tasks' requests
concurrently, records what came back, and materializes each task's asset separately. In a
window run the trigger dispatcher has already sent them at their due times; the step collects
those outcomes instead. Step retries come from Dagster's RetryPolicy; a retried step re-sends
only the executions that have not succeeded in this run and did not fail for good.
"""

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import RetrySpec, TaskSpec
from agent_pipelines.dispatcher import Dispatcher
from agent_pipelines.execution import Outcome, Planned, TaskRunner
from agent_pipelines.grouping import TaskGroup
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.checks import CheckOutcome, Judged, evaluate_all
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.store import StateStore
from agent_pipelines.task_status import trigger_text
from agent_pipelines.triggers import Trigger, trigger_from_run_tags
from resources.agent_resource import AgentResource, agent_resource_key
from resources.agents.base import AgentCallError, FailureKind
from resources.trigger_dispatcher import TRIGGER_DISPATCHER_KEY

STATE_STORE_KEY = "state_store"
_BACKOFF = {"exponential": dg.Backoff.EXPONENTIAL, "linear": dg.Backoff.LINEAR, "constant": None}
_JITTER = {"full": dg.Jitter.FULL, "plus_minus": dg.Jitter.PLUS_MINUS, "none": None}


class AgentTasksFailed(Exception):
    """Raised for retryable failures so that the op's RetryPolicy schedules another attempt."""


def retry_policy_for(retry: RetrySpec) -> dg.RetryPolicy | None:
    if retry.count == 0:
        return None
    return dg.RetryPolicy(
        max_retries=retry.count,
        delay=retry.delay,
        backoff=_BACKOFF[retry.backoff],
        jitter=_JITTER[retry.jitter],
    )


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


def task_asset_spec(catalog: Catalog, task: TaskSpec, group_name: str) -> dg.AssetSpec:
    """The asset of a task. Its definition metadata is kept to three entries: every entry of
    every asset is re-sent to the daemon each minute, and at 10,000 tasks that adds up."""
    agent = catalog.agents[task.agent]
    version = catalog.prompt_versions[task.name]
    source = catalog.locations.get(f"task:{task.name}")
    settings = [
        f"**agent** {agent.name} ({agent.kind}, {agent.model or 'default model'})",
        f"**trigger** {trigger_text(task)}" + ("" if task.enabled else " (disabled)"),
        f"**session** {task.session}",
        f"**retries** {task.retries.count} x {task.retries.backoff} from {task.retries.delay:g}s, "
        f"jitter {task.retries.jitter}; idempotent: {task.idempotent}",
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
        code_version=version,
        owners=[task.owner],
        tags={**task.tags, tags.AGENT: agent.name},
        kinds={agent.kind},
        metadata=metadata,
        skippable=True,
        automation_condition=dg.AutomationCondition.eager() if task.on_upstream else None,
    )


def _config_schema(catalog: Catalog, task_names: Sequence[str]) -> dict[str, dg.Field]:
    """Per task with variables, those variables with their defaults: the launchpad scaffolds
    them. Tasks without variables get no entry (nothing to override, and a smaller snapshot)."""
    schema: dict[str, dg.Field] = {}
    for name in task_names:
        task = catalog.tasks[name]
        if not task.variables:
            continue
        variables = {
            key: dg.Field(dg.Any, is_required=False, default_value=value)
            for key, value in task.variables.items()
        }
        schema[name] = dg.Field(
            {"variables": dg.Field(dg.Permissive(variables), is_required=False)},
            is_required=False,
            description=f"Overrides for task {name!r} in this run.",
        )
    return schema


CHECK_DESCRIPTIONS = {
    "json_schema": "The output is JSON valid against the task's schema.",
    "must_match": "The output contains every required pattern.",
    "must_not_match": "The output contains none of the forbidden patterns.",
    "max_latency": "The agent answered within the latency limit.",
    "max_tokens": "The exchange used at most the token limit.",
    "judge": "An evaluator agent scored the output at or above the threshold.",
}


def task_check_specs(task: TaskSpec) -> list[dg.AssetCheckSpec]:
    if task.checks is None:
        return []
    return [
        dg.AssetCheckSpec(name=name, asset=task.name, description=CHECK_DESCRIPTIONS[name])
        for name in task.checks.names()
    ]


def build_task_group_asset(catalog: Catalog, group: TaskGroup) -> dg.AssetsDefinition:
    group_name = group.workflow or "agent_tasks"
    specs = [task_asset_spec(catalog, catalog.tasks[name], group_name) for name in group.tasks]
    check_specs = [check for name in group.tasks for check in task_check_specs(catalog.tasks[name])]
    resource_key = agent_resource_key(group.agent)

    @dg.multi_asset(
        name=group.op_name,
        specs=specs,
        check_specs=check_specs or None,
        can_subset=True,
        retry_policy=retry_policy_for(group.retry),
        pool=f"agent_{group.agent}",
        config_schema=_config_schema(catalog, group.tasks),
        required_resource_keys={resource_key, STATE_STORE_KEY, TRIGGER_DISPATCHER_KEY},
        op_tags={tags.AGENT: group.agent},
    )
    def _run_tasks(context: AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        selected = [n for n in group.tasks if dg.AssetKey(n) in context.selected_asset_keys]
        step = _TaskStep(
            context=context,
            catalog=catalog,
            group=group,
            agent=getattr(context.resources, resource_key),
            store=getattr(context.resources, STATE_STORE_KEY).store,
            dispatcher=getattr(context.resources, TRIGGER_DISPATCHER_KEY),
        )
        yield from step.run([catalog.tasks[n] for n in selected])

    return _run_tasks


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


class _TaskStep:
    """One attempt of one step: run or collect the executions, materialize, decide on retry."""

    def __init__(
        self,
        *,
        context: AssetExecutionContext,
        catalog: Catalog,
        group: TaskGroup,
        agent: AgentResource,
        store: StateStore,
        dispatcher: Dispatcher,
    ) -> None:
        self.context = context
        self.catalog = catalog
        self.group = group
        self.store = store
        self.dispatcher = dispatcher
        self.dagster_run = context.run
        self.trigger: Trigger = trigger_from_run_tags(self.dagster_run.tags, self.dagster_run.run_id)
        overrides: Mapping[str, Any] = context.op_config or {}
        self.runner = TaskRunner(
            catalog=catalog,
            store=store,
            instance=context.instance,
            run_id=self.dagster_run.run_id,
            agents={agent.name: agent},
            log=context.log,
            variables_for=lambda name: (overrides.get(name) or {}).get("variables") or {},
        )
        self.registry = PromptRegistry(store)
        self.chooser = PromptChooser(catalog, self.registry, group.tasks)
        self.runner.choose_prompt = self.chooser.choose

    def run(self, selected: list[TaskSpec]) -> Iterator[dg.MaterializeResult]:
        self._tag_run(selected)
        outcomes: list[Outcome] = []
        latest: dict[str, Outcome] = {}
        if self.context.retry_number == 0:
            dispatched = [t.name for t in selected if self.dispatcher.handles(t.name)]
            for outcome in self.dispatcher.stream(dispatched):
                outcomes.append(outcome)
                self._keep_latest(latest, outcome)
            fresh = [p for t in selected if t.name not in dispatched for p in self._planned(t)]
            executed = self.runner.execute(fresh)
        else:
            executed = self._retry(selected)
        for outcome in executed:
            outcomes.append(outcome)
            self._keep_latest(latest, outcome)
        checks = self._evaluate([o for o in outcomes if o.ok])
        for outcome in latest.values():
            metadata, tags_ = self._materialization(outcome)
            yield dg.MaterializeResult(
                asset_key=outcome.planned.task.name,
                metadata=metadata,
                tags=tags_,
                check_results=self._check_results(outcome, checks.get(outcome.planned.key, [])),
            )
        failures = [o for o in outcomes if o.error is not None]
        if failures:
            self._fail(failures)

    # -- what to run ----------------------------------------------------------------------------

    def _planned(self, task: TaskSpec) -> list[Planned]:
        trigger = self.trigger
        if trigger.kind == "event":
            event = self.store.get_event(trigger.ref)
            if event is None:
                raise dg.Failure(f"event {trigger.ref!r} is not in the events table", allow_retries=False)
            return [Planned(task, trigger, event=event, claim="insert")]
        if trigger.kind == "schedule":
            if trigger.ref.startswith("window-") and task.depends_on and not self._upstream_ran(task):
                self.context.log.info(f"{task.name}: no upstream task produced output in this window; nothing to do")
                return []
            catchup = self.dagster_run.tags.get(tags.CATCHUP) == "true"
            return [Planned(task, trigger, claim="catchup" if catchup else "insert")]
        return [Planned(task, trigger)]

    def _upstream_ran(self, task: TaskSpec) -> bool:
        for dep in task.depends_on:
            event = self.context.instance.get_latest_materialization_event(dg.AssetKey(dep))
            if event is not None and event.run_id == self.dagster_run.run_id:
                return True
        return False

    def _retry(self, selected: list[TaskSpec]) -> list[Outcome]:
        """Re-send what has not succeeded in this run; keep permanent failures as they were."""
        earlier: dict[str, list] = defaultdict(list)
        for execution in self.store.executions_for_run(self.dagster_run.run_id):
            earlier[execution.task].append(execution)
        carried: list[Outcome] = []
        again: list[Planned] = []
        for task in selected:
            if not earlier.get(task.name):
                # The dispatcher's due times and events that never got an execution row were
                # skipped or never came: nothing of them to retry. Other tasks start afresh.
                if not self.dispatcher.handles(task.name):
                    again.extend(self._planned(task))
                continue
            for execution in earlier[task.name]:
                _task, trigger = Trigger.from_key(execution.idempotency_key)
                event = self.store.get_event(trigger.ref) if trigger.kind == "event" else None
                planned = Planned(task, trigger, event=event, claim="insert" if trigger.claimed else "none")
                if execution.status == "succeeded":
                    self.context.log.info(f"{task.name}: {trigger.ref} already succeeded in this run; not sent again")
                    continue
                if execution.status == "failed":
                    error = AgentCallError(FailureKind(execution.failure_kind or "config"), execution.error or "")
                    if not error.is_retryable(task.idempotent):
                        carried.append(Outcome(planned, attempts=execution.attempts, error=error))
                        continue
                again.append(planned)
        return [*carried, *self.runner.execute(again)]

    # -- recording ------------------------------------------------------------------------------

    def _evaluate(self, outcomes: list[Outcome]) -> dict[str, list[CheckOutcome]]:
        """Run each task's checks on every output and record them with the version they judged."""
        items = []
        for outcome in outcomes:
            checks = outcome.planned.task.checks
            if checks is None or not checks.names():
                continue
            assert outcome.response is not None and outcome.request is not None
            tokens = (outcome.response.tokens_in or 0) + (outcome.response.tokens_out or 0)
            judged = Judged(outcome.planned.key, outcome.request.prompt, outcome.response.output, outcome.response.latency_ms, tokens)
            items.append((outcome, checks, judged))
        if not items:
            return {}
        results = evaluate_all([(checks, judged) for _, checks, judged in items], self.catalog.agents)
        rows = []
        by_key: dict[str, list[CheckOutcome]] = {}
        for (outcome, _checks, judged), checked in zip(items, results, strict=True):
            by_key[outcome.planned.key] = checked
            rows.extend(
                {
                    "task": outcome.planned.task.name,
                    "version": outcome.version,
                    "idempotency_key": outcome.planned.key,
                    "run_id": self.dagster_run.run_id,
                    "check_name": result.name,
                    "passed": result.passed,
                    "score": result.score,
                    "details": result.details[:2000],
                    "canary": outcome.canary,
                    "latency_ms": judged.latency_ms,
                    "tokens": judged.tokens,
                }
                for result in checked
            )
        self.registry.record_evaluations(rows)
        return by_key

    def _check_results(self, outcome: Outcome, checked: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
        selected = self.context.selected_asset_check_keys
        name = outcome.planned.task.name
        return [
            dg.AssetCheckResult(
                asset_key=name,
                check_name=result.name,
                passed=result.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=result.details[:500],
                metadata={
                    "prompt_version": dg.MetadataValue.text(outcome.version),
                    "canary": dg.MetadataValue.bool(outcome.canary),
                    **({"score": dg.MetadataValue.float(result.score)} if result.score is not None else {}),
                },
            )
            for result in checked
            if dg.AssetCheckKey(dg.AssetKey(name), result.name) in selected
        ]

    def _keep_latest(self, latest: dict[str, Outcome], outcome: Outcome) -> None:
        """Hold each task's newest success back as the step's result; log the older ones now.

        A task can fire several times in one window (`every: 5s`): every execution is a
        materialization, logged as soon as a newer one exists, and the newest is the result
        the step yields (so that downstream steps in the run see their upstream).
        """
        name = outcome.planned.task.name
        if outcome.skipped:
            self.context.log.info(f"{name}: {outcome.planned.trigger.ref} not sent: {outcome.skipped}")
        if not outcome.ok:
            return
        previous = latest.get(name)
        if previous is not None and (previous.sent_at or previous.render_time) > (outcome.sent_at or outcome.render_time):
            previous, outcome = outcome, previous
        latest[name] = outcome
        if previous is not None:
            metadata, tags_ = self._materialization(previous)
            self.context.log_event(
                dg.AssetMaterialization(
                    asset_key=name,
                    metadata=metadata,
                    tags={**tags_, "dagster/code_version": self.catalog.prompt_versions[name]},
                )
            )

    def _materialization(self, outcome: Outcome) -> tuple[dict[str, Any], dict[str, str]]:
        task = outcome.planned.task
        response, request = outcome.response, outcome.request
        assert response is not None and request is not None
        version = outcome.version or self.catalog.prompt_versions[task.name]
        agent = self.catalog.agents[task.agent]
        metadata: dict[str, Any] = {
            "output": dg.MetadataValue.md(response.output),
            "prompt": dg.MetadataValue.md(f"```text\n{request.prompt}\n```"),
            "prompt_version": dg.MetadataValue.text(version),
            "agent": dg.MetadataValue.text(agent.name),
            "model": dg.MetadataValue.text(response.model or agent.model or "default"),
            "latency_ms": dg.MetadataValue.float(round(response.latency_ms, 3)),
            "session_id": dg.MetadataValue.text(response.session_id or "none"),
            "attempts": dg.MetadataValue.int(outcome.attempts),
            "idempotency_key": dg.MetadataValue.text(request.idempotency_key),
            "trigger": dg.MetadataValue.text(outcome.planned.trigger.kind),
            "response": dg.MetadataValue.json(dict(response.metadata)),
        }
        if response.tokens_in is not None:
            metadata["tokens_in"] = dg.MetadataValue.int(response.tokens_in)
        if response.tokens_out is not None:
            metadata["tokens_out"] = dg.MetadataValue.int(response.tokens_out)
        if outcome.render_time is not None:
            metadata["due_time"] = dg.MetadataValue.timestamp(outcome.render_time)
        if outcome.lateness_ms is not None:
            metadata["lateness_ms"] = dg.MetadataValue.float(round(outcome.lateness_ms, 3))
        if outcome.planned.event is not None:
            metadata["event_id"] = dg.MetadataValue.text(outcome.planned.event.event_id)
        if outcome.canary:
            metadata["canary"] = dg.MetadataValue.bool(True)
        task_tags = self._task_tags(task, outcome.planned.trigger.kind)
        task_tags[tags.PROMPT_VERSION] = version
        if outcome.planned.trigger.due_time is not None:
            task_tags[tags.DUE_TIME] = tags.strict_due(outcome.planned.trigger.due_time)
        if outcome.lateness_ms is not None:
            task_tags[tags.LATENESS_MS] = f"{outcome.lateness_ms:.3f}"
        return metadata, tags.strict_tags(task_tags)

    def _fail(self, failures: list[Outcome]) -> None:
        """Retry the step when a failure allows it; otherwise fail it with every reason."""
        for failure in failures:
            assert failure.error is not None
            self.context.log.error(f"{failure.planned.task.name}: {failure.error.describe()}")
        unknown = [f for f in failures if f.error is not None and f.error.outcome_unknown]
        if unknown:
            self.context.instance.add_run_tags(self.dagster_run.run_id, {tags.OUTCOME: "unknown"})
        retryable = [f for f in failures if f.retryable]
        summary = "; ".join(f"{f.planned.task.name}: {f.error.describe()}" for f in failures if f.error)
        max_retries = self.group.retry.count
        if retryable and self.context.retry_number < max_retries:
            waits = [f.error.retry_after_s for f in retryable if f.error and f.error.retry_after_s]
            if waits:
                policy = retry_policy_for(self.group.retry)
                backoff = policy.calculate_delay(self.context.retry_number + 1) if policy else 0
                raise dg.RetryRequested(max_retries=max_retries, seconds_to_wait=max([*waits, backoff]))
            raise AgentTasksFailed(f"{len(retryable)} execution(s) will be retried: {summary}")
        raise dg.Failure(
            description=f"{len(failures)} execution(s) failed: {summary}",
            metadata={
                "failures": dg.MetadataValue.json(
                    [
                        {
                            "task": f.planned.task.name,
                            "trigger": f.planned.trigger.ref,
                            "kind": f.error.kind.value,
                            "status_code": f.error.status_code,
                            "message": f.error.message,
                            "outcome": "unknown" if f.error.outcome_unknown else "failed",
                            "retryable": f.retryable,
                            "attempts": f.attempts,
                        }
                        for f in failures
                        if f.error is not None
                    ]
                ),
                "outcome": dg.MetadataValue.text("unknown" if unknown else "failed"),
            },
            allow_retries=False,
        )

    # -- tags -----------------------------------------------------------------------------------

    def _task_tags(self, task: TaskSpec, trigger: str) -> dict[str, str]:
        return {
            tags.TASK: task.name,
            tags.AGENT: task.agent,
            tags.OWNER: tags.owner_label(task.owner),
            tags.PROMPT_VERSION: self.catalog.prompt_versions[task.name],
            tags.TRIGGER: trigger,
        }

    def _tag_run(self, selected: list[TaskSpec]) -> None:
        """Tag runs launched by hand (launchpad, `dagster job execute`) like scheduled ones."""
        existing: Mapping[str, str] = self.dagster_run.tags
        new: dict[str, str] = {}
        if tags.TRIGGER not in existing:
            new[tags.TRIGGER] = self.trigger.kind
        run_selection = self.dagster_run.asset_selection or set()
        if tags.TASK not in existing and len(run_selection) == 1 and len(selected) == 1:
            task_tags = self._task_tags(selected[0], self.trigger.kind)
            new.update({k: v for k, v in task_tags.items() if k not in existing})
        if new:
            self.context.instance.add_run_tags(self.dagster_run.run_id, new)
