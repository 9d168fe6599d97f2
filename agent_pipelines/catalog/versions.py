"""Prompt versions: a stable hash of everything that changes what the agent is asked.

The hash becomes the task asset's Dagster code version, so the UI flags outputs produced by an
older prompt. Timeouts, retries, schedules and owners do not change the answer and are left out.
"""

from __future__ import annotations

import hashlib
import json

from agent_pipelines.catalog.model import AgentSpec, TaskSpec


def prompt_version(task: TaskSpec, agent: AgentSpec) -> str:
    material = {
        "prompt": task.prompt,
        "system": task.system,
        "variables": task.variables,
        "session": task.session,
        "agent": agent.name,
        "agent_kind": agent.kind,
        "model": agent.model,
        "depends_on": sorted(task.depends_on),
        "fleet": task.fleet,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
