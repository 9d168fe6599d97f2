"""The policy as long-running processes hold it (the gate, the ingress): reloaded when the file
changes, each new content audited as `policy.change`, and a loud line when there is none."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent_pipelines.access.enforce import audit_policy_load
from agent_pipelines.access.events import EventAccess
from agent_pipelines.access.policy import POLICY_ENV, Policy, PolicySource, policy_path

logger = logging.getLogger(__name__)

OPEN_ACCESS_WARNING = (
    f"no access policy (${POLICY_ENV} is not set): access is OPEN, anyone who reaches this "
    "server may do anything (fine on a laptop; see docs/access.md before exposing it)"
)


def policy_provider(store: Any, component: str, min_interval_s: float = 2.0) -> Callable[[], Policy | None]:
    """The current policy (None: open access); raises `PolicyError` when the file is bad at
    start, so a broken policy never starts an open server."""
    path = policy_path()
    if path is None:
        logger.warning("%s: %s", component, OPEN_ACCESS_WARNING)
        return lambda: None

    def changed(old: Policy | None, new: Policy) -> None:
        try:
            audit_policy_load(store, old, new, component)
        except Exception:  # the policy still applies; the lost entry is logged loudly
            logger.exception("could not audit the change of policy %s", path)

    source = PolicySource(path, on_change=changed, min_interval_s=min_interval_s)
    policy = source()
    logger.warning(
        "%s: access policy %s (sha256 %s): %d user(s), %d grant(s), %d event source grant(s)",
        component, path, policy.digest[:12], len(policy.spec.users), len(policy.spec.grants), len(policy.spec.sources),
    )
    for name in policy.missing_token_envs:
        logger.warning("%s: policy token variable $%s is not set: that token cannot sign in", component, name)
    return source


def ingress_access(store: Any, sources: Any) -> EventAccess:
    """The ingress's policy check and delivery audit, its batch writer started."""
    return EventAccess(store, policy_provider(store, "ingress"), sources.subscribed).start()
