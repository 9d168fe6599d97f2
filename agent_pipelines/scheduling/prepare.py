"""Turning an execution into the request its agent receives: prompt version, template, session.

Runs in a worker thread before the due instant (it reads the store: upstream outputs, session
ids, replayed history), so that at the instant only the sending is left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_pipelines.agents.base import AgentCallError, AgentRequest, ChatMessage, FailureKind, SessionState
from agent_pipelines.agents.pool import replays_history
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.catalog.templates import TemplateProblem, render
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.scheduling.work import Attempt, WorkItem
from agent_pipelines.store import StateStore

UTC = dt.timezone.utc
SESSION_PREFIX = "agent-pipelines"


def session_key(task: TaskSpec, execution_key: str) -> str:
    """The session id we choose and send: stable per task for `session: task` (one
    conversation), fresh per execution for `session: isolated` (every attempt of one
    execution shares it)."""
    if task.session == "task":
        return f"{SESSION_PREFIX}-{task.name}"
    digest = hashlib.sha256(execution_key.encode()).hexdigest()[:20]
    return f"{SESSION_PREFIX}-{task.name}-{digest}"


class UpstreamMissing(TemplateProblem):
    pass


@dataclass
class Preparer:
    catalog: Catalog
    store: StateStore
    chooser: PromptChooser
    clock_now: Callable[[], dt.datetime]
    variables_for: Callable[[str], Mapping[str, Any]] = lambda _task: {}

    def prepare(self, item: WorkItem) -> Attempt | AgentCallError:
        """The attempt to send, or why it cannot be (a configuration problem: nothing is sent)."""
        task, version, canary = self.chooser.choose(item.task, item.key)
        agent = self.catalog.agents[task.agent]  # type: ignore[index]
        zone = zoneinfo.ZoneInfo(task.timezone)
        render_time = (item.due_time or self.clock_now()).astimezone(zone)
        variables = {**task.variables, **self.variables_for(task.name), **item.variables}
        context: dict[str, Any] = {
            **variables,
            "task": task.name,
            "due_time": render_time,
            "now": self.clock_now().astimezone(zone),
            "trigger": item.trigger.kind,
        }
        if task.events:
            context["event"] = item.event.as_template_value() if item.event else None
        upstream: dict[str, str] = {}
        try:
            if task.depends_on:
                upstream = self.resolve_upstream(task, item.upstream)
                context["upstream"] = {**self.outputs(upstream, known=item.upstream_outputs)}
            prompt = render(task.prompt, context)
            system = render(task.system, context) if task.system else None
        except TemplateProblem as problem:
            return AgentCallError(FailureKind.CONFIG, f"prompt of {task.name!r}: {problem.message}")
        request = AgentRequest(
            prompt=prompt,
            system=system,
            idempotency_key=item.key,
            session=self.session(task, item.key),
            timeout_s=task.timeout or agent.timeout,
            task=task.name,
            variables=variables,
        )
        return Attempt(
            item=item, request=request, version=version, canary=canary, render_time=render_time, upstream=upstream
        )

    def resolve_upstream(self, task: TaskSpec, read: Mapping[str, str]) -> dict[str, str]:
        """The upstream execution each dependency's output comes from: exactly the one this
        execution follows, when it follows one, else that task's newest successful execution."""
        keys = dict(read)
        for dep in task.depends_on:
            if dep not in keys:
                latest = self.store.latest_success(dep)
                if latest is None:
                    raise UpstreamMissing(
                        f"upstream task {dep!r} has no output yet: materialize it first (or run the workflow job)"
                    )
                keys[dep] = latest.idempotency_key
        return keys

    def outputs(self, keys: Mapping[str, str], known: Mapping[str, str]) -> dict[str, str]:
        """Each dependency's output: handed over in memory (`known`), else read from the store."""
        outputs = {dep: known[dep] for dep in keys if dep in known}
        wanted = {dep: key for dep, key in keys.items() if dep not in outputs}
        results = self.store.results(list(wanted.values())) if wanted else {}
        for dep, key in wanted.items():
            result = results.get(key)
            if result is None or result.output is None:
                raise UpstreamMissing(f"the output of upstream execution {key} is not in the store")
            outputs[dep] = result.output
        return outputs

    def session(self, task: TaskSpec, key: str) -> SessionState:
        agent = self.catalog.agents[task.agent]  # type: ignore[index]
        explicit = session_key(task, key)
        if task.session == "isolated":
            return SessionState(mode="isolated", key=explicit)
        history: tuple[ChatMessage, ...] = ()
        if replays_history(agent):
            history = tuple(
                ChatMessage(role=role, content=content)  # type: ignore[arg-type]
                for role, content in self.store.history(task.name, agent.history_turns)
            )
        return SessionState(
            mode="task",
            key=explicit,
            remote_id=self.store.session_remote_id(task.name, agent.name),
            history=history,
        )
