"""The catalog's data model: agents and tasks, validated field by field.

Each spec is a frozen pydantic model with `extra="forbid"`, so a misspelt field is an error,
not a silently ignored line. Cross-spec checks (unknown agent, cycles, templates) live in
`validation.py`; this module only knows one spec at a time.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from agent_pipelines.catalog.durations import format_duration, parse_duration
from agent_pipelines.catalog.item_sources import ItemsSpec
from agent_pipelines.catalog.lifecycle import LifecycleSpec
from agent_pipelines.catalog.notifications import NotifySpec
from agent_pipelines.catalog.spec import ENV_VAR_RE, NAME_RE, Spec, owner_shorthand
from agent_pipelines.kubernetes_config import check_block

_TAG_PART = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Name = Annotated[str, Field(pattern=NAME_RE, description="lower_snake_case, used as a Dagster name")]
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: dagster-k8s's `dagster-k8s/config` sections, checked against the Kubernetes API models.
KubernetesBlock = Annotated[dict[str, Any], AfterValidator(check_block)]


# --------------------------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------------------------


class RateLimitSpec(Spec):
    """What an agent accepts per minute; 429 answers with Retry-After pause it further."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class ModelPriceSpec(Spec):
    input_per_1k: float = Field(ge=0, description="per 1,000 prompt tokens")
    output_per_1k: float = Field(ge=0, description="per 1,000 completion tokens")


class PricingSpec(ModelPriceSpec):
    """What the agent's tokens cost; `models` overrides the price for the model an answer names."""

    models: dict[str, ModelPriceSpec] = Field(default_factory=dict)

    def price_for(self, model: str | None) -> ModelPriceSpec:
        return self.models.get(model or "", self)


class AgentHealthSpec(Spec):
    """When an agent counts as unhealthy, and how it is probed until it is back."""

    unhealthy_after: int = Field(
        default=3, ge=1, le=1000, description="consecutive auth or connection failures that mark it unhealthy"
    )
    probe_every: Duration = Field(default=15.0, ge=1.0, description="first probe delay; doubles up to max_probe_every")
    max_probe_every: Duration = Field(default=300.0, ge=1.0)


class AgentSpecBase(Spec):
    """Fields every agent kind shares."""

    #: kind-specific field names passed to the client as `options`
    option_fields: ClassVar[tuple[str, ...]] = ()
    default_base_url: ClassVar[str | None] = None
    default_model: ClassVar[str | None] = None

    name: Name
    kind: str
    description: str | None = None
    base_url: str | None = None
    auth_env: Annotated[str, Field(pattern=ENV_VAR_RE)] | None = Field(
        default=None,
        description="environment variable holding the bearer token; the token never lives in YAML",
    )
    auth_file: str | None = Field(
        default=None,
        description="file holding the bearer token (e.g. a mounted Kubernetes secret); re-read when it changes",
    )
    health_path: str | None = Field(
        default=None,
        description="GET path answering 2xx when the agent is up (default per kind; a TCP connect for `http`)",
    )
    health: AgentHealthSpec = Field(default_factory=lambda: AgentHealthSpec())
    model: str | None = None
    timeout: Duration = Field(default=120.0, gt=0, description="default request timeout")
    max_concurrency: int = Field(default=4, ge=1, le=10_000)
    headers: dict[str, str] = Field(default_factory=dict)
    idempotency_header: str | None = "Idempotency-Key"
    history_turns: int = Field(
        default=10, ge=0, le=1000, description="turns replayed for `task` sessions on stateless endpoints"
    )
    http_client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp", description="HTTP client library; aiohttp is several times cheaper per request"
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="requests and tokens per minute this agent accepts (batch tasks)"
    )
    cost_per_1k_tokens: float | None = Field(default=None, ge=0, description="one price for every token (see `pricing`)")
    pricing: PricingSpec | None = Field(default=None, description="token prices, per model if they differ")
    kubernetes: KubernetesBlock | None = Field(
        default=None, description="pods of runs that call this agent, on Kubernetes (resources, tolerations, ...)"
    )
    lifecycle: LifecycleSpec | None = Field(
        default=None, description="wake the agent before it is needed, let it sleep after (http, kubernetes or command)"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for header in value:
            if header.lower() in {"authorization", "proxy-authorization", "x-api-key", "api-key"}:
                raise ValueError(
                    f"header {header!r} carries a secret: set `auth_env` to the name of an "
                    "environment variable instead of writing the secret in the catalog"
                )
        return value

    @model_validator(mode="after")
    def _apply_kind_defaults(self) -> AgentSpecBase:
        if self.base_url is None:
            if self.default_base_url is None:
                raise ValueError(f"base_url is required for agents of kind {self.kind!r}")
            object.__setattr__(self, "base_url", self.default_base_url)
        if self.model is None and self.default_model is not None:
            object.__setattr__(self, "model", self.default_model)
        return self

    @model_validator(mode="after")
    def _one_token_source(self) -> AgentSpecBase:
        if self.auth_env and self.auth_file:
            raise ValueError("set at most one of `auth_env` and `auth_file`")
        return self

    def token_cost(self, model: str | None, tokens_in: int | None, tokens_out: int | None) -> float | None:
        """What an answer cost, from `pricing` (or `cost_per_1k_tokens`); None when unknown."""
        if tokens_in is None and tokens_out is None:
            return None
        if self.pricing is not None:
            price = self.pricing.price_for(model)
            return ((tokens_in or 0) * price.input_per_1k + (tokens_out or 0) * price.output_per_1k) / 1000
        if self.cost_per_1k_tokens is not None:
            return ((tokens_in or 0) + (tokens_out or 0)) * self.cost_per_1k_tokens / 1000
        return None

    @property
    def options(self) -> dict[str, Any]:
        options = {name: getattr(self, name) for name in self.option_fields}
        if self.health_path:
            options["health_path"] = self.health_path
        return options


class OpenAIChatAgentSpec(AgentSpecBase):
    """Any OpenAI-compatible `/v1/chat/completions` endpoint (stateless)."""

    option_fields = ("path",)
    kind: Literal["openai_chat"]
    path: str = "/v1/chat/completions"

    @model_validator(mode="after")
    def _model_required(self) -> OpenAIChatAgentSpec:
        if not self.model:
            raise ValueError("`model` is required for agents of kind 'openai_chat'")
        return self


class OpenClawAgentSpec(AgentSpecBase):
    """An OpenClaw gateway with `gateway.http.endpoints.chatCompletions.enabled: true`."""

    option_fields = ("path", "agent_id")
    default_base_url = "http://127.0.0.1:18789"
    kind: Literal["openclaw"]
    path: str = "/v1/chat/completions"
    agent_id: str = "main"

    @model_validator(mode="after")
    def _model_from_agent_id(self) -> OpenClawAgentSpec:
        if self.model is None:
            object.__setattr__(self, "model", f"openclaw/{self.agent_id}")
        return self


class HermesAgentSpec(AgentSpecBase):
    """Hermes Agent's API server (`API_SERVER_ENABLED=true`)."""

    option_fields = ("path",)
    default_base_url = "http://127.0.0.1:8642"
    default_model = "hermes-agent"
    kind: Literal["hermes"]
    path: str = "/v1/chat/completions"


class DifyAgentSpec(AgentSpecBase):
    """A Dify app: chat (`/v1/chat-messages`) or workflow (`/v1/workflows/run`), blocking."""

    option_fields = ("app_mode", "user", "input_key", "output_key")
    kind: Literal["dify"]
    app_mode: Literal["chat", "workflow"] = "chat"
    user: str = "agent-pipelines"
    input_key: str = "query"
    output_key: str | None = None


class HttpAgentSpec(AgentSpecBase):
    """A home-grown agent: JSON POST with a templated body, answer at `output_path`."""

    option_fields = ("path", "body", "output_path", "tokens_in_path", "tokens_out_path", "session_id_path")
    kind: Literal["http"]
    path: str = "/"
    body: Any = Field(default_factory=lambda: {"prompt": "{{ prompt }}"})
    output_path: str = "output"
    tokens_in_path: str | None = None
    tokens_out_path: str | None = None
    session_id_path: str | None = None


AGENT_SPEC_TYPES: dict[str, type[AgentSpecBase]] = {
    "openai_chat": OpenAIChatAgentSpec,
    "openclaw": OpenClawAgentSpec,
    "hermes": HermesAgentSpec,
    "dify": DifyAgentSpec,
    "http": HttpAgentSpec,
}

AgentSpec = OpenAIChatAgentSpec | OpenClawAgentSpec | HermesAgentSpec | DifyAgentSpec | HttpAgentSpec


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _until_value(value: Any) -> Any:
    return value if value in (None, "next_due") else parse_duration(value)


class RetrySpec(Spec):
    """Retries of one execution, each at its own time; `count` is retries after the first attempt.

    `until` bounds how long an execution stays worth trying: `next_due` (until the task's next
    due time) or a duration after its due time (or, without one, after it was triggered). What
    is given up is recorded with the reason.
    """

    count: int = Field(default=2, ge=0, le=1000)
    delay: Duration = Field(default=10.0, ge=0)
    backoff: Literal["exponential", "linear", "constant"] = "exponential"
    jitter: Literal["none", "full", "plus_minus"] = "plus_minus"
    max_delay: Duration = Field(default=600.0, gt=0, description="no wait between attempts is longer than this")
    until: Annotated[Literal["next_due"] | float | None, BeforeValidator(_until_value)] = None


class CronScheduleSpec(Spec):
    """Cron in a time zone: 5 fields, or 6 with seconds first (as OpenClaw and Quartz read it).

    `offset` shifts every cron time by a fixed delay: OpenClaw staggers each job's top-of-hour
    runs by a stable per-job offset of up to 5 minutes, with millisecond precision, which no
    cron expression can say.
    """

    cron: str
    timezone: str = "UTC"
    offset: Duration = Field(default=0.0, ge=0, lt=86_400, description="fire this long after each cron time")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        fields = value.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"invalid cron expression {value!r}: expected 5 fields (minute hour day-of-month "
                "month day-of-week) or 6 with seconds first"
            )
        minute_fields = fields[1:] if len(fields) == 6 else fields
        if not croniter.is_valid(" ".join(minute_fields)):
            raise ValueError(f"invalid cron expression {value!r}")
        if len(fields) == 6 and not croniter.is_valid(f"{fields[0]} * * * *"):
            raise ValueError(f"invalid seconds field {fields[0]!r} in cron expression {value!r}")
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @property
    def has_seconds(self) -> bool:
        return len(self.cron.split()) == 6

    @model_serializer(mode="wrap")
    def _without_zero_offset(self, handler: Any) -> Any:
        """Schedules without an offset serialize as before it existed (catalog item digests)."""
        data = handler(self)
        if isinstance(data, dict) and not self.offset:
            data.pop("offset", None)
        return data

    def describe(self) -> str:
        offset = f" + {format_duration(self.offset)}" if self.offset else ""
        return f"cron `{self.cron}`{offset} ({self.timezone})"


class IntervalScheduleSpec(Spec):
    """Every N seconds, aligned to `anchor` (default: the Unix epoch, UTC)."""

    every: Duration = Field(ge=1.0)
    anchor: dt.datetime | None = None

    @field_validator("anchor")
    @classmethod
    def _aware_anchor(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("anchor needs a UTC offset or `Z`, e.g. 2026-01-01T00:00:00Z")
        return value

    def describe(self) -> str:
        anchor = f" from {self.anchor.isoformat()}" if self.anchor else ""
        return f"every {format_duration(self.every)}{anchor}"


class OneShotScheduleSpec(Spec):
    """Once, at an absolute time with an offset."""

    at: dt.datetime

    @field_validator("at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("`at` needs a UTC offset or `Z`, e.g. 2026-12-01T09:00:00+08:00")
        return value

    def describe(self) -> str:
        return f"once at {self.at.isoformat()}"


SCHEDULE_KINDS = ("cron", "every", "at")


def _schedule_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        present = [key for key in SCHEDULE_KINDS if key in value]
        return present[0] if len(present) == 1 else None
    if isinstance(value, BaseModel):
        return next(k for k in SCHEDULE_KINDS if hasattr(value, k))
    return None


def _schedule_shorthand(value: Any) -> Any:
    """`schedule: "0 9 * * *"` means cron in UTC."""
    return {"cron": value} if isinstance(value, str) else value


ScheduleSpec = Annotated[
    Annotated[CronScheduleSpec, Tag("cron")]
    | Annotated[IntervalScheduleSpec, Tag("every")]
    | Annotated[OneShotScheduleSpec, Tag("at")],
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_kind",
        custom_error_message="a schedule needs exactly one of `cron`, `every` or `at`",
    ),
]


class MisfirePolicySpec(Spec):
    """What to do with due times nobody fired by `due + grace` (daemon down, run lost)."""

    policy: Literal["skip", "latest", "all"] = "skip"
    grace: Duration = Field(default=60.0, ge=1.0)
    max_catchup: int = Field(default=10, ge=1, le=10_000)


CHECK_NAMES = ("json_schema", "must_match", "must_not_match", "max_latency", "max_tokens", "judge")


class JudgeSpec(Spec):
    """An evaluator agent from the catalog scores each output against a rubric (0 to 1)."""

    agent: Name
    rubric: str = Field(min_length=1)
    pass_threshold: float = Field(default=0.7, ge=0.0, le=1.0)


class ChecksSpec(Spec):
    """Evaluations of every output; each is a Dagster asset check on the task's asset."""

    json_schema: dict[str, Any] | None = None
    must_match: list[str] = Field(default_factory=list)
    must_not_match: list[str] = Field(default_factory=list)
    max_latency: Duration | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    judge: JudgeSpec | None = None
    must_pass: list[str] = Field(
        default_factory=list, description="checks a tuned candidate may never fail to be promoted"
    )
    min_pass_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="batch tasks: a shard's asset check passes when at least this share of its answered items pass it",
    )

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"invalid JSON Schema: {exc.message}") from exc
        return value

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return value

    def names(self) -> list[str]:
        """The configured checks, in a stable order."""
        present = {
            "json_schema": self.json_schema is not None,
            "must_match": bool(self.must_match),
            "must_not_match": bool(self.must_not_match),
            "max_latency": self.max_latency is not None,
            "max_tokens": self.max_tokens is not None,
            "judge": self.judge is not None,
        }
        return [name for name in CHECK_NAMES if present[name]]

    @model_validator(mode="after")
    def _must_pass_known(self) -> ChecksSpec:
        for name in self.must_pass:
            if name not in self.names():
                raise ValueError(f"must_pass names {name!r}, which is not one of the configured checks {self.names()}")
        return self


class TuningSpec(Spec):
    """Self-tuning of the prompt from the task's evaluation history (needs `checks`)."""

    tuner: Name
    min_pass_rate: float = Field(default=0.9, ge=0.0, le=1.0)
    window: int = Field(default=20, ge=1, le=10_000, description="latest executions the pass rate is computed over")
    canary_share: float = Field(default=0.2, gt=0.0, le=1.0)
    min_runs: int = Field(default=5, ge=1)
    margin: float = Field(default=0.1, ge=0.0, le=1.0)
    approval: Literal["auto", "manual"] = "auto"
    max_proposals_per_day: int = Field(default=3, ge=0, le=100)
    tune_parameters: bool = True


class EventSubscriptionSpec(Spec):
    """Run the task for each event of `source` whose type and payload fields match."""

    source: Name
    type: str | list[str] = "*"
    match: dict[str, Any] = Field(default_factory=dict)

    def types(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)


class BudgetLimitSpec(Spec):
    per_day: float = Field(gt=0, description="token cost per UTC day (in the unit of the agents' `pricing`)")
    pause: bool = Field(default=False, description="pause the tasks until the next day instead of only warning")


class BudgetSpec(BudgetLimitSpec):
    """A team's (owner's) budget over all its tasks: top-level `budgets:`."""

    name: Name
    owner: Annotated[str, BeforeValidator(owner_shorthand)]


class TaskSpec(Spec):
    name: Name
    description: str | None = None
    owner: Annotated[str, BeforeValidator(owner_shorthand)]
    agent: Name | None = None
    fleet: Name | None = Field(default=None, description="batch tasks: spread shards over this agent fleet")
    prompt: str = Field(min_length=1)
    system: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    schedule: Annotated[ScheduleSpec | None, BeforeValidator(_schedule_shorthand)] = None
    misfire: MisfirePolicySpec = Field(default_factory=MisfirePolicySpec)
    overload: Literal["all", "latest_only", "skip_while_running", "wait_while_running"] = Field(
        default="all",
        description="while its agent is saturated: `latest_only` lets a newer due time replace a waiting older one; "
        "`skip_while_running` also skips a due time while an earlier one of the task is still in flight; "
        "`wait_while_running` lets it wait for that one until its misfire deadline instead",
    )
    priority: int = Field(default=0, ge=-100, le=100, description="higher goes first when its agent is saturated")
    events: list[EventSubscriptionSpec] = Field(default_factory=list)
    on_upstream: bool = Field(
        default=False, description="also run whenever an upstream task's output is materialized"
    )
    session: Literal["isolated", "task"] = "isolated"
    retries: RetrySpec = Field(default_factory=RetrySpec)
    timeout: Duration | None = Field(default=None, gt=0)
    idempotent: bool = False
    tags: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    depends_on: list[Name] = Field(default_factory=list)
    items: ItemsSpec | None = Field(default=None, description="batch tasks: one prompt per item")
    shards: int | None = Field(default=None, ge=1, le=1000)
    shard_by: str | None = Field(default=None, description="batch tasks: one shard per value of this column")
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    shards_per_run: int | None = Field(
        default=None,
        ge=1,
        description="batch tasks: a backfill launches one run per this many shards (default: one run for all); "
        "on Kubernetes each run is a pod of its own",
    )
    shard_processes: int | None = Field(
        default=None,
        ge=1,
        description="batch tasks: processes one run's shards are spread over, the shards of a node staying together "
        "(default: one per core when each gets 20,000 items or more; 1 keeps every shard in the run's process)",
    )
    checks: ChecksSpec | None = None
    tuning: TuningSpec | None = None
    kubernetes: KubernetesBlock | None = Field(
        default=None, description="pods of runs that carry this task, on Kubernetes; merged over its agent's"
    )
    budget: BudgetLimitSpec | None = Field(default=None, description="token spend per UTC day: warn, or pause the task")
    notify: NotifySpec | None = Field(default=None, description="who hears about failures, recoveries, lateness, ... (see `notifications:`)")

    @property
    def is_batch(self) -> bool:
        return self.items is not None

    @model_validator(mode="after")
    def _agent_or_fleet(self) -> TaskSpec:
        if (self.agent is None) == (self.fleet is None):
            raise ValueError("set exactly one of `agent` and `fleet`")
        if self.fleet is not None and self.items is None:
            raise ValueError("`fleet` spreads the shards of a batch task: it needs `items`")
        return self

    @model_validator(mode="after")
    def _batch_fields(self) -> TaskSpec:
        if self.items is None:
            for name in ("shards", "shard_by", "shards_per_run", "shard_processes"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` only applies to batch tasks (tasks with `items`)")
            return self
        if self.shards is not None and self.shard_by is not None:
            raise ValueError("set at most one of `shards` and `shard_by`")
        if self.shards is None and self.shard_by is None and self.fleet is None:
            raise ValueError("a batch task needs `shards: N`, `shard_by: <column>` or `fleet`")
        if self.session == "task":
            raise ValueError("batch tasks run each item in its own session (`session: isolated`)")
        return self

    @model_validator(mode="after")
    def _tuning_needs_checks(self) -> TaskSpec:
        if self.tuning is not None and (self.checks is None or not self.checks.names()):
            raise ValueError("`tuning` learns from evaluations: declare `checks` too")
        return self

    @model_validator(mode="after")
    def _pass_rate_of_items(self) -> TaskSpec:
        if self.items is None and self.checks is not None and "min_pass_rate" in self.checks.model_fields_set:
            raise ValueError("`checks.min_pass_rate` applies to batch tasks (a share of items): every output of a regular task is checked alone")
        return self

    @field_validator("owner")
    @classmethod
    def _valid_owner(cls, value: str) -> str:
        if value.startswith("team:") and len(value) > 5:
            return value
        if _EMAIL.match(value):
            return value
        raise ValueError(f"owner must be a team name or an email address, got {value!r}")

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        from agent_pipelines.catalog.templates import BUILTIN_VARIABLES

        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
                raise ValueError(f"variable name {name!r} is not a valid identifier")
            if name in BUILTIN_VARIABLES:
                raise ValueError(f"variable {name!r} shadows a built-in template variable")
        return value

    @field_validator("tags")
    @classmethod
    def _dagster_tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag_value in value.items():
            if not all(_TAG_PART.match(part) for part in str(key).split("/")):
                raise ValueError(
                    f"tag key {key!r}: use letters, digits, '_', '-', '.', optionally a "
                    "'namespace/' prefix, at most 63 characters per part"
                )
            if not _TAG_VALUE.match(str(tag_value)):
                raise ValueError(
                    f"tag {key!r} value {tag_value!r}: use letters, digits, '_', '-', '.', "
                    "at most 63 characters"
                )
        return value

    @property
    def timezone(self) -> str:
        """The time zone the task's times are shown and rendered in."""
        return self.schedule.timezone if isinstance(self.schedule, CronScheduleSpec) else "UTC"

    @model_validator(mode="after")
    def _latest_only_needs_a_period(self) -> TaskSpec:
        if self.overload != "all" and (self.schedule is None or isinstance(self.schedule, OneShotScheduleSpec) or self.items is not None):
            raise ValueError(f"`overload: {self.overload}` replaces older due times with newer ones: it needs a recurring `schedule` (cron or every)")
        return self

    @model_validator(mode="after")
    def _until_next_due_needs_a_schedule(self) -> TaskSpec:
        if self.retries.until == "next_due" and self.schedule is None:
            raise ValueError("`retries.until: next_due` needs a `schedule` (use a duration, e.g. `until: 10m`)")
        return self

    @model_validator(mode="after")
    def _on_upstream_needs_upstream(self) -> TaskSpec:
        reads_upstream = self.items is not None and (self.items.from_task or getattr(self.items, "from_output", None))
        if self.on_upstream and not self.depends_on and not reads_upstream:
            raise ValueError(
                "`on_upstream: true` needs `depends_on` (or, for a batch task, items from another task): "
                "the tasks whose outputs start this one"
            )
        return self

    @field_validator("depends_on")
    @classmethod
    def _unique_deps(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for dep in value:
            if dep in seen:
                raise ValueError(f"{dep!r} is listed twice")
            seen.add(dep)
        return value


# --------------------------------------------------------------------------------------------
# Event sources (the HTTP ingress)
# --------------------------------------------------------------------------------------------


class BearerAuthSpec(Spec):
    """`Authorization: Bearer <token>`, the token read from `token_env`."""

    kind: Literal["bearer"]
    token_env: Annotated[str, Field(pattern=ENV_VAR_RE)]


class HmacAuthSpec(Spec):
    """HMAC-SHA256 signatures with the secret in `secret_env`, in one of two formats.

    `timestamped` (the default, as Stripe signs webhooks): `<header>: t=<unix seconds>,v1=<hex>`
    over `<t>.<idempotency key or empty>.<raw body>`; a signature further than `tolerance` from
    the server's clock is refused, so a captured request cannot be replayed later.
    `github`: `<header>: sha256=<hex>` over the raw body, what GitHub and many webhook senders
    send; it signs no time, so the event id is derived from the signature and a replay is always
    a duplicate of the stored event (identical bodies are one event).
    """

    FORMAT_HEADERS: ClassVar[dict[str, str]] = {"timestamped": "X-Signature", "github": "X-Hub-Signature-256"}

    kind: Literal["hmac"]
    secret_env: Annotated[str, Field(pattern=ENV_VAR_RE)]
    format: Literal["timestamped", "github"] = "timestamped"
    header: str | None = Field(default=None, description="X-Signature (timestamped) or X-Hub-Signature-256 (github)")
    tolerance: Duration = Field(default=300.0, gt=0, le=86_400, description="how far a timestamped signature may be from the server's clock")

    @property
    def header_name(self) -> str:
        return self.header or self.FORMAT_HEADERS[self.format]


class EventSourceSpec(Spec):
    name: Name
    description: str | None = None
    auth: Annotated[BearerAuthSpec | HmacAuthSpec, Field(discriminator="kind")]
    type_field: str = Field(default="type", description="dotted path of the event type in the JSON body")
    type_header: str | None = Field(default=None, description="header carrying the event type (wins over type_field)")
    id_header: str = Field(default="Idempotency-Key", description="header with the sender's idempotency key")
    max_body_bytes: int = Field(default=256 * 1024, ge=1, le=64 * 1024 * 1024)


# --------------------------------------------------------------------------------------------
# Fleets (agent groups)
# --------------------------------------------------------------------------------------------


class FleetNodeSpec(Spec):
    name: Name
    base_url: str


class FleetSpec(Spec):
    """A named group of agent endpoints of one kind; batch shards are spread over its nodes.

    Every agent field (auth_env, model, timeout, max_concurrency, rate_limit, ...) may be set
    on the fleet and applies to each node; `nodes` lists them, or `base_url_template` with
    `{i}` (0-based) and `count` generates them.
    """

    FLEET_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"name", "description", "kind", "nodes", "base_url_template", "count", "health_path"}
    )

    name: Name
    description: str | None = None
    kind: str
    nodes: list[FleetNodeSpec] = Field(default_factory=list)
    base_url_template: str | None = None
    count: int | None = Field(default=None, ge=1, le=10_000)
    health_path: str | None = Field(default=None, description="GET this path; 2xx means the node is up")
    node_specs: tuple[AgentSpecBase, ...] = Field(default=(), exclude=True)

    @model_validator(mode="after")
    def _nodes_or_template(self) -> FleetSpec:
        if self.nodes and (self.base_url_template or self.count):
            raise ValueError("list `nodes`, or give `base_url_template` and `count`, not both")
        if not self.nodes:
            if not (self.base_url_template and self.count):
                raise ValueError("a fleet needs `nodes`, or `base_url_template` with `{i}` and `count`")
            if "{i}" not in self.base_url_template:
                raise ValueError("`base_url_template` must contain `{i}` (the node's 0-based index)")
        return self

    def node_list(self) -> list[FleetNodeSpec]:
        if self.nodes:
            return list(self.nodes)
        assert self.base_url_template and self.count
        return [
            FleetNodeSpec(name=f"node{i}", base_url=self.base_url_template.replace("{i}", str(i)))
            for i in range(self.count)
        ]
