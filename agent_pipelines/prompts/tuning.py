"""The feedback loop: propose a better prompt when a task falls short, try it, promote or drop it.

For each task with `tuning`:
1. with an open candidate: once it has `min_runs` evaluated executions, promote it when it beats
   the active version by `margin` and never failed a `must_pass` check (or wait for a person's
   approval, per policy); drop it when it does worse, fails a must-pass check, or cannot show a
   gain within three times `min_runs`;
2. without one: when the active version's pass rate over the last `window` executions is below
   `min_pass_rate`, send the tuner agent the current prompt, failing outputs with their check
   results and the best past versions, and register its answer as a candidate, with the
   executions that motivated it. Parameters (timeout, retries) are proposed from history.
At most `max_proposals_per_day` proposals per task: the loop can never run away.

A batch task's items are its executions: each run adds one history entry per prompt version that
weighs as its items (`pass_rate`, `evaluated`, `latest`), so windows and `min_runs` count items.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_pipelines.audit import audit, system_actor
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.templates import BUILTIN_VARIABLES, TemplateProblem, analyze
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.checks import parse_json_output
from agent_pipelines.scheduling import event_loop
from agent_pipelines.prompts.effective import registry_version, with_version
from agent_pipelines.prompts.registry import PromptRegistry, PromptVersion, catalog_parameters
from agent_pipelines.agents.base import TRANSIENT_KINDS, AgentCallError, AgentRequest, SessionState

TUNING_JOB = "prompt_tuning_job"
#: Failing outputs shown to the tuner.
FAILING_SAMPLES = 5


@dataclass
class Decision:
    task: str
    action: str  # none | proposed | promoted | awaiting_approval | rejected | skipped
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


#: Decisions that change the registry (the others only report).
_REGISTRY_CHANGES = ("proposed", "promoted", "awaiting_approval", "rejected")


def evaluated(runs: Sequence[Mapping[str, Any]]) -> int:
    """Executions the entries stand for: one each, or a batch run's `items`."""
    return sum(r.get("items", 1) for r in runs)


def pass_rate(runs: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of executions that passed every check; a batch entry weighs as its items."""
    total = evaluated(runs)
    if not total:
        return None
    return sum(r.get("passed_items", 1 if r["passed"] else 0) for r in runs) / total


def latest(runs: Sequence[Mapping[str, Any]], size: int) -> list[Mapping[str, Any]]:
    """The newest entries covering `size` executions (a batch run counts whole)."""
    taken: list[Mapping[str, Any]] = []
    covered = 0
    for run in runs:
        if covered >= size:
            break
        taken.append(run)
        covered += run.get("items", 1)
    return taken


def failing_examples(runs: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Failed executions to show the tuner: whole executions, or a batch run's failing samples
    (which carry their output, since batch outputs live in Parquet, not in the store)."""
    examples: list[dict[str, Any]] = []
    for run in runs:
        if run["passed"]:
            continue
        samples = run.get("samples")
        if samples is None:
            examples.append(dict(run))
        else:
            examples += [{"run_id": run["run_id"], **sample} for sample in samples]
        if len(examples) >= limit:
            break
    return examples[:limit]


class Tuner:
    """Reads every task's whole evaluation history and full outputs from the store."""

    def __init__(
        self,
        catalog: Catalog,
        registry: PromptRegistry,
        *,
        pool_factory: Callable[[Mapping[str, Any]], AgentPool] = AgentPool,
        actor: str = "tuner",
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.pool_factory = pool_factory
        self.actor = actor
        self.now = now

    def outputs_for(self, keys: Sequence[str]) -> dict[str, str]:
        results = self.registry.store.results(list(keys))
        return {key: result.output for key, result in results.items() if result.output is not None}

    def run(self, tasks: Sequence[str] | None = None) -> list[Decision]:
        names = tasks or [n for n, t in self.catalog.tasks.items() if t.tuning is not None]
        decisions = [self.tune(name) for name in names if self.catalog.tasks[name].tuning is not None]
        for decision in decisions:
            if decision.action in _REGISTRY_CHANGES:
                # The tuner changes what runs as much as a person does: the audit log says so.
                audit(self.registry.store, system_actor(self.actor), f"prompt.{decision.action}", decision.task,
                      version=decision.version, **decision.details)
        return decisions

    def tune(self, name: str) -> Decision:
        # What runs now: the registry's active version applied to the catalog's task.
        task, active_version = PromptChooser(self.catalog, self.registry, [name]).active(self.catalog.tasks[name])
        assert task.tuning is not None
        stats = self.registry.executions_by_version(name, limit=max(task.tuning.window, task.tuning.min_runs) * 10)
        active_runs = latest(stats.get(active_version, []), task.tuning.window)
        candidate = self.registry.candidate(name)
        if candidate is not None and candidate.base_version != self.catalog.base_versions[name]:
            self.registry.reject(name, candidate.version, actor=self.actor, reason="the catalog prompt changed")
            candidate = None
        if candidate is not None:
            return self._judge_candidate(task, candidate, active_runs, stats.get(candidate.version, []))
        rate = pass_rate(active_runs)
        if rate is None or evaluated(active_runs) < min(task.tuning.min_runs, task.tuning.window):
            return Decision(name, "none", active_version, {"reason": "not enough evaluated executions yet", "runs": evaluated(active_runs)})
        if rate >= task.tuning.min_pass_rate:
            return Decision(name, "none", active_version, {"pass_rate": rate})
        return self._propose(task, active_version, active_runs, stats)

    # -- candidates -----------------------------------------------------------------------------

    def _judge_candidate(self, task: TaskSpec, candidate: PromptVersion, active_runs: list, candidate_runs: list) -> Decision:
        tuning = task.tuning
        assert tuning is not None and task.checks is not None
        name = task.name
        must_pass = set(task.checks.must_pass)
        broke = [r for r in candidate_runs if must_pass & set(r["failed"])]
        details: dict[str, Any] = {"candidate_runs": evaluated(candidate_runs)}
        if broke:
            self.registry.reject(name, candidate.version, actor=self.actor, reason="failed a must-pass check", executions=[r["key"] for r in broke])
            return Decision(name, "rejected", candidate.version, {**details, "reason": f"failed must-pass checks {sorted(must_pass & set(broke[0]['failed']))}"})
        if evaluated(candidate_runs) < tuning.min_runs:
            return Decision(name, "none", candidate.version, {**details, "reason": f"candidate needs {tuning.min_runs} evaluated executions"})
        candidate_rate = pass_rate(candidate_runs) or 0.0
        active_rate = pass_rate(active_runs)
        details.update(candidate_pass_rate=candidate_rate, active_pass_rate=active_rate)
        baseline = active_rate if active_rate is not None else 0.0
        if candidate_rate >= baseline + tuning.margin:
            if tuning.approval == "manual":
                if not any(e.action == "awaiting_approval" and e.version == candidate.version for e in self.registry.events(name)):
                    self.registry._set_status(name, candidate.version, "candidate", "awaiting_approval", self.actor, **details)
                return Decision(name, "awaiting_approval", candidate.version, details)
            self.registry.promote(name, candidate.version, actor=self.actor, **details)
            return Decision(name, "promoted", candidate.version, details)
        if candidate_rate < baseline or evaluated(candidate_runs) >= 3 * tuning.min_runs:
            self.registry.reject(name, candidate.version, actor=self.actor, reason="no gain over the active version", **details)
            return Decision(name, "rejected", candidate.version, details)
        return Decision(name, "none", candidate.version, {**details, "reason": "gain not yet shown"})

    # -- proposals ------------------------------------------------------------------------------

    def _propose(self, task: TaskSpec, active_version: str, active_runs: list, stats: Mapping[str, list]) -> Decision:
        tuning = task.tuning
        assert tuning is not None
        name = task.name
        since = self.now() - dt.timedelta(days=1)
        if self.registry.proposals_since(name, since) >= tuning.max_proposals_per_day:
            return Decision(name, "skipped", active_version, {"reason": f"{tuning.max_proposals_per_day} proposals in the last 24 h already"})
        failing = failing_examples(active_runs, FAILING_SAMPLES)
        outputs = {**self.outputs_for([r["key"] for r in failing]), **{r["key"]: r["output"] for r in failing if r.get("output")}}
        best = sorted(
            ((v, pass_rate(runs) or 0.0) for v, runs in stats.items() if v != active_version and runs),
            key=lambda item: -item[1],
        )[:2]
        request_text = self._request_text(task, active_version, pass_rate(active_runs) or 0.0, failing, outputs, best)
        answer = self._ask_tuner(task, request_text, active_version)
        if isinstance(answer, str):
            return Decision(name, "skipped", active_version, {"reason": answer})
        prompt, rationale = answer
        problem = self._template_problem(task, prompt)
        if problem:
            return Decision(name, "rejected", None, {"reason": f"the tuner's prompt is not a valid template: {problem}"})
        parameters = self._parameters(task) if tuning.tune_parameters else catalog_parameters(task)
        proposed = task.model_copy(update={"prompt": prompt})
        proposed = with_version(proposed, _as_version(proposed, parameters))
        version = registry_version(proposed, self.catalog.agent_of(task), self.catalog.tasks[name])
        if self.registry.get(name, version) is not None:
            return Decision(name, "skipped", version, {"reason": "the tuner proposed a version that exists already"})
        candidate = self.registry.register(
            name,
            version=version,
            prompt=prompt,
            system=task.system,
            parameters=parameters,
            reason="tuner",
            base_version=self.catalog.base_versions[name],
            parent_version=active_version,
            status="candidate",
            author=self.actor,
            motivation={
                "rationale": rationale,
                "active_pass_rate": pass_rate(active_runs),
                "failing_executions": [r["key"] for r in failing],
                "failing_runs": sorted({r["run_id"] for r in failing}),
                "failed_checks": {r["key"]: r["failed"] for r in failing},
            },
        )
        return Decision(name, "proposed", candidate.version, {"rationale": rationale, "parameters": parameters})

    def _request_text(self, task, version, rate, failing, outputs, best) -> str:  # noqa: ANN001
        assert task.checks is not None
        lines = [
            "### PROMPT TUNING REQUEST",
            f"Task: {task.name} ({task.description or 'no description'})",
            f"Current prompt (version {version}, pass rate {rate:.0%}):",
            "<<<",
            task.prompt,
            ">>>",
            "Checks every output must pass: " + ", ".join(task.checks.names()),
        ]
        if task.checks.json_schema is not None:
            lines.append("JSON Schema of the output: " + json.dumps(task.checks.json_schema))
        lines.append("Failing outputs:")
        for index, run in enumerate(failing, 1):
            output = outputs.get(run["key"], "(output not available)")
            lines.append(f"{index}. failed {json.dumps(run['failed'])}; output: {output[:600]!r}")
        for past, past_rate in best:
            previous = self.registry.get(task.name, past)
            if previous is not None:
                lines += [f"Past version {past} (pass rate {past_rate:.0%}):", "<<<", previous.prompt, ">>>"]
        lines.append(
            'Answer with a JSON object only: {"prompt": "<the improved prompt template, same Jinja '
            'variables>", "rationale": "<why it should pass the checks>"}'
        )
        return "\n".join(lines)

    def _ask_tuner(self, task: TaskSpec, text: str, version: str) -> tuple[str, str] | str:
        assert task.tuning is not None
        agent = self.catalog.agents[task.tuning.tuner]
        key = f"agent-pipelines:{task.name}:tuning:{version}:{self.now().strftime('%Y%m%dT%H%M%S')}"

        async def ask() -> str:
            async with self.pool_factory({agent.name: agent}) as pool:
                response = await pool.connection(agent.name).invoke(
                    AgentRequest(prompt=text, idempotency_key=key, session=SessionState("isolated", key), timeout_s=agent.timeout, task=f"{task.name}:tuner")
                )
                return response.output

        try:
            output = event_loop.run(ask())
        except AgentCallError as error:
            return f"tuner agent failed: {error.describe()}"
        try:
            answer = parse_json_output(output)
            return str(answer["prompt"]), str(answer.get("rationale", ""))
        except (ValueError, KeyError, TypeError) as exc:
            return f"tuner answer unreadable ({exc!r}): {output[:200]}"

    def _template_problem(self, task: TaskSpec, prompt: str) -> str | None:
        try:
            names = analyze(prompt)
        except TemplateProblem as problem:
            return problem.message
        allowed = set(task.variables) | (BUILTIN_VARIABLES if task.is_batch else BUILTIN_VARIABLES - {"item", "shard"})
        unknown = sorted(names.variables - allowed)
        return f"undefined variables {unknown}" if unknown else None

    def _parameters(self, task: TaskSpec) -> dict[str, Any]:
        """Timeout from latency percentiles, retries from the transient failure rate."""
        parameters = catalog_parameters(task)
        if task.is_batch:
            return parameters  # its executions are whole runs: their latency says nothing of an item's
        executions = self.registry.store.executions_for_task(task.name, limit=200)
        latencies = sorted(e.latency_ms for e in executions if e.latency_ms)
        timeout = task.timeout or self.catalog.agent_of(task).timeout
        if len(latencies) >= 5:
            p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)] / 1000.0
            if p95 > 0.8 * timeout:
                parameters["timeout"] = float(math.ceil(2 * p95))
        failed = [e for e in executions if e.status == "failed"]
        transient = [e for e in failed if e.failure_kind and any(e.failure_kind == k.value for k in TRANSIENT_KINDS)]
        if executions and len(transient) / len(executions) > 0.2 and task.retries.count < 5:
            parameters["retries"] = {**parameters["retries"], "count": task.retries.count + 1}
        return parameters


def _as_version(task: TaskSpec, parameters: dict[str, Any]) -> PromptVersion:
    return PromptVersion(
        task=task.name, version="", seq=0, parent_version=None, base_version="", author=None, reason="tuner",
        status="candidate", prompt=task.prompt, system=task.system, parameters=parameters, motivation={},
        created_at=dt.datetime.now(dt.timezone.utc),
    )
