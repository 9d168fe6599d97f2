"""Who is acting, and the one call every mutation makes to leave its trace in the audit log.

Every place that changes something (CLI, event ingress, the gate in front of the Dagster UI,
sensors that notice a catalog or policy change) records it here, and so does every denied
attempt, with the actor, the channel (`via`) and where it came from.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_pipelines.store.audit import AuditEntry
    from agent_pipelines.store.store import StateStore

#: Who runs the CLI, when it is not the operating-system user (a CI job, a shared admin box).
USER_ENV = "AGENT_PIPELINES_USER"


@dataclass(frozen=True)
class Actor:
    name: str
    via: str  # cli | ui | graphql | ingress | sensor | api
    origin: str  # client address, or host and pid for local processes
    groups: tuple[str, ...] = field(default=())


def cli_actor() -> Actor:
    name = os.environ.get(USER_ENV) or getpass.getuser()
    return Actor(name=name, via="cli", origin=f"{socket.gethostname()} pid {os.getpid()}")


def system_actor(component: str) -> Actor:
    """The platform itself, e.g. the sensor that notices a catalog change."""
    return Actor(name=f"system:{component}", via="sensor", origin=f"{socket.gethostname()} pid {os.getpid()}")


def audit(
    store: StateStore,
    actor: Actor,
    action: str,
    target: str,
    *,
    outcome: str = "allowed",
    **details: Any,
) -> AuditEntry:
    """Append one entry; a failure to record is an error the caller sees (no silent mutations)."""
    return store.append_audit(
        actor=actor.name,
        via=actor.via,
        origin=actor.origin,
        action=action,
        target=target,
        outcome=outcome,
        details={"groups": list(actor.groups), **details} if actor.groups else details,
    )
