"""Decisions turned into outcomes: a denial is audited and raised, an allowed mutation audited,
and a new policy content recorded as a `policy.change` entry.

The CLI and the ingress call `authorize`; the gate keeps its own loop because it answers in
GraphQL's shape (see `gate`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agent_pipelines.access.decisions import Decision, Role, TaskRef, can_all, denials
from agent_pipelines.access.identity import Identity, cli_identity
from agent_pipelines.access.policy import Policy, grant_summary, load_policy, policy_path
from agent_pipelines.audit import Actor, audit

if TYPE_CHECKING:
    from agent_pipelines.catalog.loader import Catalog
    from agent_pipelines.store.store import StateStore

logger = logging.getLogger(__name__)


class Denied(Exception):
    """A refused action, already audited; the message says who lacks which role where."""

    def __init__(self, decisions: Sequence[Decision]) -> None:
        self.decisions = list(decisions)
        first = self.decisions[0].reason
        more = f" (and {len(self.decisions) - 1} more task(s))" if len(self.decisions) > 1 else ""
        super().__init__(f"access denied: {first}{more}")


def target_text(tasks: Sequence[TaskRef] | None, fallback: str = "*") -> str:
    """The audit target: the task's name for one task (so a prefix filter finds it)."""
    if tasks is None or not tasks:
        return fallback
    from agent_pipelines.tags import summary

    return summary(sorted(t.name for t in tasks))


def authorize(
    store: StateStore,
    policy: Policy | None,
    identity: Identity,
    action: str,
    tasks: Sequence[TaskRef] | None,
    *,
    target: str | None = None,
    needed: Role | None = None,
    audit_allowed: bool = True,
    **details: Any,
) -> list[Decision]:
    """Raise `Denied` (after auditing it) unless every task allows `action`; audit it allowed."""
    decisions = can_all(policy, identity, action, tasks, needed)
    refused = denials(decisions)
    shown = target or target_text(tasks)
    actor = identity.actor()
    if refused:
        audit(
            store, actor, action, shown, outcome="denied",
            reason=refused[0].reason, denied_tasks=[d.task.name for d in refused if d.task], needed=refused[0].needed.name, **details,
        )
        raise Denied(refused)
    if audit_allowed:
        audit(store, actor, action, shown, **({"policy": "open"} if policy is None else {}), **details)
    return decisions


def catalog_tasks(catalog: Catalog, names: Sequence[str] | None = None) -> list[TaskRef]:
    """TaskRefs for `names` (every catalog task when None); unknown names are left out."""
    chosen = catalog.tasks if names is None else {n: catalog.tasks[n] for n in names if n in catalog.tasks}
    return [TaskRef(name, spec.owner) for name, spec in sorted(chosen.items())]


def current_policy(store: StateStore | None = None, component: str = "cli") -> Policy | None:
    """The policy at `$AGENT_PIPELINES_POLICY` (None when unset), its change audited."""
    path = policy_path()
    if path is None:
        return None
    policy = load_policy(path)
    if store is not None:
        audit_policy_load(store, None, policy, component)
    return policy


def audit_policy_load(store: StateStore, old: Policy | None, new: Policy, component: str) -> bool:
    """Append `policy.change` when `new` differs (by SHA-256) from the content the last entry
    recorded; every process that loads the policy calls this, so a change is noticed by the
    first one to load it, and the grants are kept in the entry for the next comparison."""
    last = store.audit_entries(action="policy.change", limit=1)
    previous_hash = old.digest if old is not None else (last[0].details.get("new_hash") if last else None)
    if previous_hash == new.digest:
        return False
    previous_grants = set(last[0].details.get("grants", [])) if last else set(grant_summary(old))
    grants = grant_summary(new)
    audit(
        store,
        Actor(f"system:{component}", "system", f"{socket.gethostname()} pid {os.getpid()}"),
        "policy.change",
        str(new.path),
        old_hash=previous_hash,
        new_hash=new.digest,
        added=sorted(set(grants) - previous_grants),
        removed=sorted(previous_grants - set(grants)),
        grants=grants,
        users=len(new.spec.users),
        sources=sorted(new.spec.sources),
    )
    logger.warning("policy %s: new content %s audited (policy.change)", new.path, new.digest[:12])
    return True


@contextlib.contextmanager
def guarded(
    store: StateStore,
    catalog: Catalog,
    action: str,
    task_names: Sequence[str],
    *,
    unknown_needs_admin: bool = True,
    **details: Any,
) -> Iterator[Identity]:
    """For CLI mutations: check the policy for the CLI's user (raising an audited `Denied`),
    run the block, then audit it `allowed`, or `failed` with the error when the block raises.

    Tasks missing from the catalog need admin, unless `unknown_needs_admin` is False: then
    the block runs unchecked and unaudited, for actions that refuse unknown tasks themselves.
    """
    policy = current_policy(store, "cli")
    identity = cli_identity(policy)
    known = catalog_tasks(catalog, task_names)
    if len(known) < len(set(task_names)) and not unknown_needs_admin:
        yield identity
        return
    tasks = known if len(known) == len(set(task_names)) else None
    target = target_text(known) if tasks is not None else ", ".join(task_names)[:500]
    authorize(store, policy, identity, action, tasks, target=target, audit_allowed=False, **details)
    extra = {"policy": "open"} if policy is None else {}
    try:
        yield identity
    except BaseException as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        audit(store, identity.actor(), action, target, outcome="failed", error=message[:500], **extra, **details)
        raise
    audit(store, identity.actor(), action, target, **extra, **details)
