"""An agent's `lifecycle:`: how the platform wakes it before it is needed and lets it sleep after.

Exactly one backend says how: `http` (a hook that starts and stops it, e.g. a sandbox or
serverless API), `kubernetes` (a Deployment or StatefulSet scaled between 0 and `replicas`) or
`command` (a local process: a gateway on a laptop or VM). `ready` says how to tell it is up
(default: the agent's own health check). The wake is planned `lead` before the next due time of
any of its tasks; it sleeps after `idle_after` without work and with no due time within
`lead + idle_after`, never before `min_up` and never while anything is in flight.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.spec import ENV_VAR_RE, Spec

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


class HttpCallSpec(Spec):
    url: str
    method: Literal["POST", "PUT", "PATCH", "GET", "DELETE"] = "POST"
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _valid(cls, value: str) -> str:
        return _http_url(value)


class HttpLifecycleSpec(Spec):
    """POST (or another method) to `wake.url` to start the agent, to `sleep.url` to stop it."""

    wake: HttpCallSpec
    sleep: HttpCallSpec
    auth_env: Annotated[str, Field(pattern=ENV_VAR_RE)] | None = Field(
        default=None, description="bearer token for both calls, read from this variable at each call"
    )
    timeout: Duration = Field(default=30.0, gt=0)


class KubernetesLifecycleSpec(Spec):
    """Scale a Deployment or StatefulSet between 0 and `replicas`."""

    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    replicas: int = Field(default=1, ge=1, le=1000)
    kubeconfig: str | None = Field(default=None, description="default: in-cluster configuration, else ~/.kube/config")


Command = Annotated[list[str], BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]


class CommandLifecycleSpec(Spec):
    """`start` runs in a process group of its own and is kept running (the agent, e.g. a gateway);
    `stop` (optional) stops it, else its process group gets SIGTERM, then SIGKILL."""

    start: Command = Field(min_length=1, description="argv, or one string run by the shell")
    stop: Command | None = None
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    log: str | None = Field(default=None, description="file for its output (default: discarded)")


class ReadySpec(Spec):
    url: str | None = Field(default=None, description="GET answering 2xx once the agent is up (default: its health check)")
    timeout: Duration = Field(default=120.0, gt=0, description="after a wake, how long to wait for ready")
    every: Duration = Field(default=1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _valid(cls, value: str | None) -> str | None:
        return _http_url(value) if value is not None else None


class LifecycleSpec(Spec):
    http: HttpLifecycleSpec | None = None
    kubernetes: KubernetesLifecycleSpec | None = None
    command: CommandLifecycleSpec | None = None
    ready: ReadySpec = Field(default_factory=ReadySpec)
    lead: Duration = Field(default=120.0, ge=0, description="wake this long before the next due time")
    idle_after: Duration = Field(default=600.0, ge=1, description="sleep after this long without work")
    min_up: Duration = Field(default=300.0, ge=0, description="never sleep sooner after a wake (no flapping)")
    hourly_cost: float | None = Field(default=None, ge=0, description="what an hour awake costs, for cost reports")

    @model_validator(mode="after")
    def _one_backend(self) -> LifecycleSpec:
        chosen = [name for name in ("http", "kubernetes", "command") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one backend of http, kubernetes, command (got {', '.join(chosen) or 'none'})")
        return self

    @property
    def backend(self) -> str:
        return next(name for name in ("http", "kubernetes", "command") if getattr(self, name) is not None)
