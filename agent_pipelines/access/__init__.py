"""Who may do what to which task: the policy file, the identities that call us, the decisions,
and the authenticating gate in front of the Dagster webserver.

Enforced in four places with one policy (`$AGENT_PIPELINES_POLICY`): the CLI, the event ingress,
the Dagster UI and its GraphQL API (through `gate`). Without a policy file access is open, as in
local development, and every part says so when it starts. See docs/access.md.
"""

from agent_pipelines.access.decisions import Decision, Role, TaskRef, can
from agent_pipelines.access.identity import Identity
from agent_pipelines.access.policy import POLICY_ENV, Policy, PolicyError, load_policy

__all__ = ["POLICY_ENV", "Decision", "Identity", "Policy", "PolicyError", "Role", "TaskRef", "can", "load_policy"]
