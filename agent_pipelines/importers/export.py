"""Hand imported tasks back: turn their jobs on again in the agent, re-creating deleted ones.

Each imported task names its job (`source_job_id`). A job that still exists is enabled (or
resumed); one that is gone is re-created from the task, and found again by a later export:
OpenClaw through the declaration key `agent-pipelines:<task>`, Hermes by the task's name. A
task that is disabled here leaves its job as it is: the job was off when it was imported.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_pipelines.importers import hermes, openclaw
from agent_pipelines.importers.catalog_file import CatalogState
from agent_pipelines.importers.gateways import GatewayError, GatewaySpec

_RAW = re.compile(r"^\{% raw %\}(.*)\{% endraw %\}$", re.DOTALL)
_JINJA = re.compile(r"\{\{|\{%|\{#")


def prompt_text(prompt: str) -> str | None:
    """The literal text an imported prompt stands for (None: it is a real template)."""
    match = _RAW.match(prompt)
    if match and "endraw" not in match.group(1):
        return match.group(1)
    if not _JINJA.search(prompt):
        return prompt
    literal = re.sub(r"\{\{ '([{}%#])' \}\}", r"\1", prompt)
    return None if _JINJA.search(re.sub(r"\{\{ '([{}%#])' \}\}", "", prompt)) else literal


@dataclass
class ExportAction:
    kind: str
    gateway: GatewaySpec
    task: str
    job_id: str
    plan: str  # enable | already | create | leave | error
    target: str | None = None  # the job that is (or will be) on
    reason: str | None = None
    create: Any = None  # OpenClaw CLI args, or Hermes request body
    task_enabled: bool = True
    messages: list[str] = field(default_factory=list)
    ok: bool = True

    def apply(self) -> None:
        module = openclaw if self.kind == "openclaw" else hermes
        try:
            if self.plan == "enable":
                error = module.set_enabled(self.gateway, [self.target], True).get(self.target)  # type: ignore[list-item]
                if error:
                    self.ok, self.reason = False, error
                else:
                    self.messages.append(f"job {self.target} enabled")
            elif self.plan == "create":
                job = (openclaw.add_job(self.gateway, self.create) if self.kind == "openclaw"
                       else hermes.create_job(self.gateway, self.create))
                self.target = str(job.get("id")) if isinstance(job, dict) else None
                self.messages.append(f"job re-created as {self.target}")
        except GatewayError as exc:
            self.ok, self.reason = False, str(exc)

    def line(self, dry_run: bool) -> str:
        head = f"{self.task} -> {self.kind} {self.gateway.name} job {self.target or self.job_id}"
        if not self.ok or self.plan == "error":
            return f"{head}: NOT EXPORTED: {self.reason}"
        text = {
            "enable": "would enable" if dry_run else "enabled",
            "already": "already enabled",
            "create": "would re-create (the job is gone)" if dry_run else "re-created",
            "leave": f"left as it is: {self.reason}",
        }[self.plan]
        extra = "; ".join(m for m in self.messages if not m.startswith("job "))
        return f"{head}: {text}" + (f" ({extra})" if extra else "")

    def as_json(self) -> dict[str, Any]:
        return {"task": self.task, "kind": self.kind, "gateway": self.gateway.name, "source_job_id": self.job_id,
                "plan": self.plan, "job": self.target, "ok": self.ok and self.plan != "error", "reason": self.reason,
                "messages": self.messages}


def apply_all(actions: list[ExportAction]) -> None:
    """Enable the jobs, one connection per gateway, then re-create the lost ones."""
    enabling: dict[str, list[ExportAction]] = {}
    for action in actions:
        if action.plan == "enable" and action.ok:
            enabling.setdefault(action.gateway.name, []).append(action)
    for group in enabling.values():
        module = openclaw if group[0].kind == "openclaw" else hermes
        try:
            outcome = module.set_enabled(group[0].gateway, [a.target for a in group], True)
        except GatewayError as exc:
            outcome = {a.target: str(exc) for a in group}
        for action in group:
            error = outcome.get(action.target)
            if error:
                action.ok, action.reason = False, error
            else:
                action.messages.append(f"job {action.target} enabled")
    for action in actions:
        if action.plan == "create" and action.ok:
            action.apply()


def _job_on(kind: str, job: Mapping[str, Any]) -> bool:
    if kind == "hermes":
        return bool(job.get("enabled", True)) and job.get("state") != "paused"
    return bool(job.get("enabled", True))


def plan_export(kind: str, gateways: list[GatewaySpec], catalog: Any, state: CatalogState,
                names: set[str] | None) -> list[ExportAction]:
    by_name = {g.name: g for g in gateways}
    chosen = sorted(
        (found for key, found in state.imported.items() if key[0] == kind and key[1] in by_name
         and (names is None or found.name in names)),
        key=lambda f: f.name,
    )
    jobs_of: dict[str, list[dict[str, Any]] | GatewayError] = {}
    actions: list[ExportAction] = []
    module = openclaw if kind == "openclaw" else hermes
    for found in chosen:
        assert found.key is not None
        gateway = by_name[found.key[1]]
        action = ExportAction(kind, gateway, found.name, found.key[2], plan="error")
        actions.append(action)
        if gateway.name not in jobs_of:
            try:
                jobs_of[gateway.name] = module.read_jobs(gateway)[0]
            except GatewayError as exc:
                jobs_of[gateway.name] = exc
        jobs = jobs_of[gateway.name]
        if isinstance(jobs, GatewayError):
            action.ok, action.reason = False, str(jobs)
            continue
        spec = catalog.tasks.get(found.name)
        if spec is None:
            action.ok, action.reason = False, "the task is not valid in the catalog (`agent-pipelines validate`)"
            continue
        action.task_enabled = spec.enabled
        job = next((j for j in jobs if str(j.get("id")) == action.job_id), None)
        if job is None:
            job = (next((j for j in jobs if j.get("declarationKey") == openclaw.declaration_key(found.name)), None)
                   if kind == "openclaw" else hermes.find_job_by_name(jobs, found.name))
        if job is not None:
            action.target = str(job.get("id"))
        if job is not None and _job_on(kind, job):
            action.plan = "already"
        elif not spec.enabled:
            action.plan, action.reason = "leave", "the task is disabled here (its job was off when it was imported)"
        elif job is not None:
            action.plan = "enable"
        else:
            _plan_create(action, spec, catalog, gateway)
    return actions


def _plan_create(action: ExportAction, spec: Any, catalog: Any, gateway: GatewaySpec) -> None:
    text = prompt_text(spec.prompt)
    if text is None:
        action.ok, action.reason = False, "the job is gone and the prompt is a template (it uses variables): re-create it by hand"
        return
    at = getattr(spec.schedule, "at", None)
    if at is not None and at <= dt.datetime.now(dt.timezone.utc):
        action.ok, action.reason = False, f"the job is gone and its one-shot time {at.isoformat()} has passed"
        return
    if action.kind == "openclaw":
        agent = catalog.agents.get(spec.agent) if spec.agent else None
        params = openclaw.add_params(spec, agent, text)
        if params is None:
            action.ok, action.reason = False, "the job is gone and the task has no schedule OpenClaw can run"
            return
        action.plan, action.create = "create", params
        if getattr(spec.schedule, "offset", 0):
            action.messages.append("OpenClaw gives the new job a stagger offset of its own")
        return
    schedule, why = hermes.schedule_text(spec, hermes.configured_zone(gateway))
    if schedule is None:
        action.ok, action.reason = False, f"the job is gone and its schedule cannot be said to Hermes: {why}"
        return
    action.plan, action.create = "create", {"name": spec.name, "schedule": schedule, "prompt": text, "deliver": "local"}
