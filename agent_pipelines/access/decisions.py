"""`can(policy, identity, action, task)`: the one decision every entry point asks for.

An action needs a role (`ACTION_ROLES`); the identity holds, per task, the highest role any of
its grants gives on that task's team and name. Without a policy everything is allowed (open
local development). An action whose tasks are unknown needs admin on every task: what cannot
be attributed is denied by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent_pipelines.access.identity import Identity
from agent_pipelines.access.policy import Policy, Role

__all__ = ["ACTION_ROLES", "Decision", "Role", "TaskRef", "can", "can_all", "needed_role"]


@dataclass(frozen=True, order=True)
class TaskRef:
    """A task as the policy sees it: its name and its owner (`team:<name>` or an email)."""

    name: str
    owner: str

    @property
    def team(self) -> str:
        return self.owner.removeprefix("team:")


#: The role each audited action needs on the task it touches. GraphQL mutations are mapped in
#: `graphql_mutations`; an action missing here needs admin.
ACTION_ROLES: dict[str, Role] = {
    "view": Role.viewer,
    "task.pause": Role.operator,
    "task.resume": Role.operator,
    "task.run_now": Role.operator,
    "prompt.promote": Role.owner,
    "prompt.approve": Role.owner,
    "prompt.rollback": Role.owner,
    "prompt.reject": Role.owner,
    "prompt.sync": Role.owner,
    "ui.launch": Role.operator,
}


def needed_role(action: str) -> Role:
    return ACTION_ROLES.get(action, Role.admin)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str
    needed: Role
    held: Role | None
    task: TaskRef | None  # None: the whole platform (or tasks that could not be determined)
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def can(policy: Policy | None, identity: Identity, action: str, task: TaskRef | None, needed: Role | None = None) -> Decision:
    """May `identity` do `action` on `task`? `task=None` means every task (or unknown ones)."""
    needed = needed or needed_role(action)
    if policy is None:
        return Decision(True, action, needed, Role.admin, task, "no access policy configured: access is open")
    groups = policy.groups_of(identity.name, identity.groups)
    held = policy.global_role(identity.name, groups) if task is None else policy.role_on(identity.name, groups, task.name, task.owner)
    if held is not None and held >= needed:
        return Decision(True, action, needed, held, task, f"{identity.name} is {held.name}")
    what = f"task {task.name!r} (team {task.team})" if task is not None else "every task (the tasks it touches cannot be determined)"
    has = f"is only {held.name} there" if held is not None else "has no role there"
    return Decision(
        False, action, needed, held, task,
        f"{identity.name} may not {action} on {what}: it needs {needed.name} and {identity.name} {has}",
    )


def can_all(
    policy: Policy | None, identity: Identity, action: str, tasks: Sequence[TaskRef] | None, needed: Role | None = None
) -> list[Decision]:
    """One decision per task (one for the whole platform when `tasks` is None); the caller
    proceeds only when all allow."""
    if tasks is None:
        return [can(policy, identity, action, None, needed)]
    return [can(policy, identity, action, task, needed) for task in tasks]


def denials(decisions: Iterable[Decision]) -> list[Decision]:
    return [d for d in decisions if not d.allowed]


def may_view(policy: Policy | None, identity: Identity) -> bool:
    """Reads are global (the Dagster UI cannot hide one team's runs): any grant allows them."""
    return policy is None or policy.any_role(identity.name, policy.groups_of(identity.name, identity.groups)) is not None


def may_change_anything(policy: Policy | None, identity: Identity) -> bool:
    """Whether the UI should show its launch buttons at all (operator somewhere)."""
    if policy is None:
        return True
    role = policy.any_role(identity.name, policy.groups_of(identity.name, identity.groups))
    return role is not None and role >= Role.operator
