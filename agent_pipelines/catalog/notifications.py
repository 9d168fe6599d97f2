"""Notifications in the catalog: named channels (apprise URLs), routes per owner, a task's `notify:`.

A channel's URL is read when a message is delivered, never when the catalog loads: `url_env`
names a variable holding the whole URL, or `url` carries `${VAR}` references for its secret
parts. A secret written into the catalog itself (a password, a token in a query string, a
service whose token is the URL's path) is refused here, so it never reaches git.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.spec import ENV_VAR_RE, Spec, owner_shorthand

Duration = Annotated[float, BeforeValidator(parse_duration)]
ChannelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

EventKind = Literal["failure", "recovery", "late", "check_failed", "agent_unhealthy", "budget_exceeded"]
EVENT_KINDS: tuple[str, ...] = ("failure", "recovery", "late", "check_failed", "agent_unhealthy", "budget_exceeded")
DEFAULT_WINDOW_S = 900.0

#: `${NAME}` in a channel URL, replaced with the variable's value at delivery time.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Query parameters whose literal value is a secret.
_SECRET_PARAM = re.compile(r"(token|secret|pass|password|key|apikey|api_key|signature|sig|auth)$", re.IGNORECASE)
#: Apprise services whose URL path *is* the credential (a webhook token): never inline.
TOKEN_IN_URL_SCHEMES = frozenset(
    {
        "slack", "dingtalk", "feishu", "lark", "discord", "tgram", "msteams", "workflows", "wecombot",
        "pover", "pbul", "gchat", "mmost", "mmosts", "rocket", "rockets", "ntfys", "signal", "signals",
    }
)


def _owner_shorthand(value: Any) -> Any:
    """As for tasks (`owner_shorthand`); `*` is every owner."""
    return value if value == "*" else owner_shorthand(value)


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


class ChannelSpec(Spec):
    """Where messages go: an apprise URL (`mailto://`, `json://`, `slack://`, `dingtalk://`, ...)."""

    name: ChannelName
    description: str | None = None
    url: str | None = Field(default=None, description="apprise URL; secret parts as ${VAR}, read at delivery")
    url_env: Annotated[str, Field(pattern=ENV_VAR_RE)] | None = Field(
        default=None, description="environment variable holding the whole apprise URL"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ChannelSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of `url` and `url_env`")
        return self

    @field_validator("url")
    @classmethod
    def _no_inline_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
            raise ValueError(f"expected an apprise URL like 'mailto://...' or 'json://...', got {value!r}")
        if scheme in TOKEN_IN_URL_SCHEMES and not ENV_REFERENCE.search(value):
            raise ValueError(
                f"{scheme}:// URLs carry their token: use `url_env` (or a ${{VAR}} reference) instead of "
                "writing the secret in the catalog"
            )
        parts = urlsplit(value)
        if parts.password and not ENV_REFERENCE.fullmatch(parts.password):
            raise ValueError("the URL holds a password: write it as ${VAR} (read at delivery time) or use `url_env`")
        for key, param in parse_qsl(parts.query, keep_blank_values=True):
            if _SECRET_PARAM.search(key) and param and not ENV_REFERENCE.fullmatch(param):
                raise ValueError(f"query parameter {key!r} looks like a secret: write it as ${{VAR}} or use `url_env`")
        return value

    @property
    def scheme(self) -> str | None:
        """The apprise scheme when the URL is in the catalog (None for `url_env`)."""
        return self.url.split("://", 1)[0].lower() if self.url else None

    def env_vars(self) -> list[str]:
        """Variables this channel reads at delivery time."""
        if self.url_env:
            return [self.url_env]
        return ENV_REFERENCE.findall(self.url or "")


class _RuleFields(Spec):
    channels: Annotated[list[ChannelName], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        default_factory=list
    )
    events: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS), min_length=1)
    late_after: Duration | None = Field(default=None, gt=0, description="`late` fires past this lateness")
    window: Duration | None = Field(
        default=None, ge=1, description="at most one message per subject and kind per window (default 15m)"
    )

    @field_validator("channels", "events")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return _unique(value)


class RouteSpec(_RuleFields):
    """The channels of every task (and agent, budget) of an owner; `owner: "*"` matches all."""

    owner: Annotated[str, BeforeValidator(_owner_shorthand)]
    channels: Annotated[list[ChannelName], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        min_length=1
    )

    @field_validator("owner")
    @classmethod
    def _valid_owner(cls, value: str) -> str:
        if value == "*" or (value.startswith("team:") and len(value) > 5) or re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", value):
            return value
        raise ValueError(f"owner must be a team name, an email address or '*', got {value!r}")

    def matches(self, owner: str) -> bool:
        return self.owner in ("*", owner)


class NotifySpec(_RuleFields):
    """A task's own `notify:`: its channels and events, and whether its owner's routes apply too."""

    owner_routes: bool = Field(default=True, description="also notify the routes of the task's owner")


class DeliverySpec(Spec):
    """How hard delivery tries: `max_attempts` with back-off from `retry_delay` to `max_retry_delay`."""

    max_attempts: int = Field(default=6, ge=1, le=100)
    retry_delay: Duration = Field(default=30.0, gt=0)
    max_retry_delay: Duration = Field(default=3600.0, gt=0)
    timeout: Duration = Field(default=10.0, gt=0, le=120, description="per message: connect and read timeout")


class NotificationsSpec(Spec):
    """The valid part of every file's `notifications:` block, merged."""

    channels: dict[str, ChannelSpec] = Field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)

    @property
    def enabled(self) -> bool:
        return bool(self.channels)


class NotificationsBlockSpec(Spec):
    """One file's top-level `notifications:` mapping (channels and routes are checked one by one)."""

    channels: list[Any] = Field(default_factory=list)
    routes: list[Any] = Field(default_factory=list)
    delivery: DeliverySpec | None = None
