"""The access policy: users, groups, tokens, role grants per team and task glob, what each event
source may trigger, and which proxies may vouch for a user.

One YAML file at `$AGENT_PIPELINES_POLICY`, validated as a whole: every problem is reported
with the file, line and field, and a policy with any problem is refused (a half-read policy
would grant or deny more than its author wrote). Tokens are never stored in the file in plain
text: a token is either its SHA-256 (`sha256:`) or the name of an environment variable that
holds it (`token_env:`), so the file can be committed and reviewed.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_pipelines.catalog.spec import ENV_VAR_RE
from agent_pipelines.catalog.yaml_lines import YamlLoadError, line_at, load_yaml_with_lines

logger = logging.getLogger(__name__)

POLICY_ENV = "AGENT_PIPELINES_POLICY"
MAX_POLICY_BYTES = 4 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(IntEnum):
    """Each role can do what the ones below it can."""

    viewer = 1  # read the UI, the API and the /ops pages
    operator = 2  # run now, launch, re-execute, terminate, pause and resume
    owner = 3  # promote, approve, reject and roll back prompts; schedules and sensors on and off
    admin = 4  # everything: wipe, delete, platform-wide and unknown mutations


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class TokenSpec(_Model):
    """One credential: its SHA-256 in hex, or the environment variable that holds it."""

    sha256: str | None = Field(default=None, description="hex SHA-256 of the token: `printf %s TOKEN | sha256sum`")
    token_env: Annotated[str, Field(pattern=ENV_VAR_RE)] | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s TOKEN | sha256sum`)")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one(self) -> TokenSpec:
        if (self.sha256 is None) == (self.token_env is None):
            raise ValueError("set exactly one of `sha256` and `token_env`")
        return self


class UserSpec(_Model):
    groups: list[str] = Field(default_factory=list)
    tokens: list[TokenSpec] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, value: Any) -> Any:
        if isinstance(value, dict) and "token" in value:
            raise ValueError(
                "plaintext `token` is not allowed in the policy file: use `tokens: [{sha256: <hex>}]` "
                "(printf %s TOKEN | sha256sum) or `tokens: [{token_env: VARIABLE}]`"
            )
        return value


RoleName = Literal["viewer", "operator", "owner", "admin"]


class GrantSpec(_Model):
    """`role` on the tasks whose owner matches `team` and whose name matches `tasks` (globs),
    for the listed users and groups (`"*"`: anyone authenticated)."""

    role: RoleName
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    team: str = Field(default="*", description="glob over the task owner: a team name (`research`) or an email")
    tasks: list[str] = Field(default_factory=lambda: ["*"], description="globs over task names")

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("team")
    @classmethod
    def _team(cls, value: str) -> str:
        return value.removeprefix("team:")

    @model_validator(mode="after")
    def _subjects(self) -> GrantSpec:
        if not self.users and not self.groups:
            raise ValueError("a grant needs `users` or `groups` (use `groups: ['*']` for anyone signed in)")
        return self

    @property
    def is_global(self) -> bool:
        return self.team == "*" and "*" in self.tasks


class SourceGrantSpec(_Model):
    """The tasks an event source may start: owner matches one of `teams`, name one of `tasks`."""

    tasks: list[str] = Field(min_length=1, description="globs over task names")
    teams: list[str] = Field(default_factory=lambda: ["*"], description="globs over task owners")

    @field_validator("tasks", "teams", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class IdentityHeadersSpec(_Model):
    """Headers an authenticating proxy (oauth2-proxy, an OIDC ingress) sets after sign-in."""

    user: str = "X-Forwarded-User"
    email: str = "X-Forwarded-Email"
    groups: str = "X-Forwarded-Groups"


class PolicySpec(_Model):
    users: dict[str, UserSpec] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict, description="group name -> member user names")
    grants: list[GrantSpec] = Field(default_factory=list)
    sources: dict[str, SourceGrantSpec] = Field(default_factory=dict)
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses or networks allowed to vouch for a user with identity headers"
    )
    identity_headers: IdentityHeadersSpec = Field(default_factory=IdentityHeadersSpec)

    @field_validator("users", "groups", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
        return value

    @functools.cached_property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)


class PolicyError(Exception):
    """A policy file that cannot be used; `problems` are `file:line: field: message` lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"policy {path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Policy:
    """A validated policy with its lookups precomputed; immutable, so it is safe to share."""

    spec: PolicySpec
    path: Path | None = None
    digest: str = ""
    _token_users: dict[str, str] = field(default_factory=dict, repr=False)
    _member_groups: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    missing_token_envs: tuple[str, ...] = ()

    # --- identities ---------------------------------------------------------------------

    def user_for_token(self, token: str) -> str | None:
        if not token:
            return None
        return self._token_users.get(hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())

    def groups_of(self, user: str, extra: Iterable[str] = ()) -> frozenset[str]:
        """Groups from the policy (`users.<u>.groups` and `groups:` members) and from the caller
        (a proxy's groups header)."""
        return self._member_groups.get(_fold(user), frozenset()) | frozenset(extra)

    def is_trusted_proxy(self, address: str | None) -> bool:
        if not address or not self.spec.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.spec.proxy_networks)

    # --- roles --------------------------------------------------------------------------

    def _grants_for(self, user: str, groups: Iterable[str]) -> Iterable[GrantSpec]:
        name = _fold(user)
        group_set = set(groups)
        for grant in self.spec.grants:
            if "*" in grant.users or name in (_fold(u) for u in grant.users) or "*" in grant.groups or group_set & set(grant.groups):
                yield grant

    def role_on(self, user: str, groups: Iterable[str], task: str, owner: str) -> Role | None:
        """The highest role `user` holds on task `task` owned by `owner` (`team:x` or an email)."""
        team = owner.removeprefix("team:")
        best: Role | None = None
        for grant in self._grants_for(user, groups):
            if fnmatch.fnmatchcase(team, grant.team) and any(fnmatch.fnmatchcase(task, g) for g in grant.tasks):
                role = Role[grant.role]
                best = role if best is None or role > best else best
        return best

    def global_role(self, user: str, groups: Iterable[str]) -> Role | None:
        """The highest role held on every task (team `*`, tasks `*`)."""
        roles = [Role[g.role] for g in self._grants_for(user, groups) if g.is_global]
        return max(roles) if roles else None

    def any_role(self, user: str, groups: Iterable[str]) -> Role | None:
        """The highest role held on at least some tasks."""
        roles = [Role[g.role] for g in self._grants_for(user, groups)]
        return max(roles) if roles else None

    # --- event sources ------------------------------------------------------------------

    def source_may_trigger(self, source: str, task: str, owner: str) -> bool:
        grant = self.spec.sources.get(source)
        if grant is None:
            return False
        team = owner.removeprefix("team:")
        return any(fnmatch.fnmatchcase(team, t) for t in grant.teams) and any(fnmatch.fnmatchcase(task, g) for g in grant.tasks)


def _fold(name: str) -> str:
    """User names compare case-insensitively: proxies disagree on the case of emails."""
    return name.strip().casefold()


def policy_path() -> Path | None:
    configured = os.environ.get(POLICY_ENV, "").strip()
    return Path(configured) if configured else None


def load_policy(path: Path | str, environ: dict[str, str] | None = None) -> Policy:
    """Read and validate a policy file; raise `PolicyError` naming every problem."""
    path = Path(path)
    environ = dict(os.environ) if environ is None else environ
    try:
        raw_bytes = path.read_bytes()
        document = load_yaml_with_lines(path, max_bytes=MAX_POLICY_BYTES)
    except OSError as exc:
        raise PolicyError(path, [f"{path}: cannot read the policy file: {exc}"]) from exc
    except YamlLoadError as exc:
        raise PolicyError(path, [f"{path}:{exc.line or 1}: {exc.message}"]) from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyError(path, [f"{path}:1: the policy must be a mapping with `users`, `groups`, `grants`, `sources`"])
    try:
        spec = PolicySpec.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            where = ".".join(str(part) for part in loc) or "(top level)"
            if error["type"] == "extra_forbidden":
                message = f"unknown field {loc[-1]!r}"
            elif error["type"] == "missing":
                message = "required field is missing"
            else:
                message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{line_at(document, loc) or 1}: {where}: {message}")
        raise PolicyError(path, problems) from None
    token_users, missing, problems = _token_index(spec, document, path, environ)
    if problems:
        raise PolicyError(path, problems)
    members: dict[str, set[str]] = {}
    for user, user_spec in spec.users.items():
        members.setdefault(_fold(user), set()).update(user_spec.groups)
    for group, names in spec.groups.items():
        for name in names:
            members.setdefault(_fold(name), set()).add(group)
    return Policy(
        spec=spec,
        path=path,
        digest=hashlib.sha256(raw_bytes).hexdigest(),
        _token_users=token_users,
        _member_groups={name: frozenset(groups) for name, groups in members.items()},
        missing_token_envs=tuple(missing),
    )


def _token_index(spec: PolicySpec, document: Any, path: Path, environ: dict[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    index: dict[str, str] = {}
    missing: list[str] = []
    problems: list[str] = []
    for user, user_spec in spec.users.items():
        for position, token in enumerate(user_spec.tokens):
            if token.token_env is not None:
                value = environ.get(token.token_env, "")
                if not value:
                    missing.append(token.token_env)
                    continue
                digest = hashlib.sha256(value.encode()).hexdigest()
            else:
                digest = token.sha256 or ""
            owner = index.get(digest)
            if owner is not None and owner != user:
                loc = ("users", user, "tokens", position)
                problems.append(
                    f"{path}:{line_at(document, loc) or 1}: users.{user}.tokens.{position}: "
                    f"the same token is also given to {owner!r}; a token must identify one user"
                )
            index[digest] = user
    return index, missing, problems


def grant_summary(policy: Policy | None) -> list[str]:
    """One line per grant, for `policy.change` audit entries."""
    if policy is None:
        return []
    return [
        f"{g.role} users={','.join(g.users) or '-'} groups={','.join(g.groups) or '-'} team={g.team} tasks={','.join(g.tasks)}"
        for g in policy.spec.grants
    ] + [f"source {name}: teams={','.join(s.teams)} tasks={','.join(s.tasks)}" for name, s in policy.spec.sources.items()]


class PolicySource:
    """The policy at a path, reloaded when the file changes (checked at most every
    `min_interval_s`). A file that stops validating keeps the previous policy and is logged;
    `on_change(old, new)` is called for every new content (by SHA-256), including the first
    load, so the change can be audited."""

    def __init__(
        self,
        path: Path | str,
        *,
        min_interval_s: float = 2.0,
        on_change: Callable[[Policy | None, Policy], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self.error: PolicyError | None = None
        self._policy: Policy = load_policy(self.path)  # a bad policy at start is fatal
        self._signature = self._stat()
        self._checked_at = clock()
        if on_change is not None:
            on_change(None, self._policy)

    def __call__(self) -> Policy:
        if self._clock() - self._checked_at >= self.min_interval_s:
            with self._lock:
                if self._clock() - self._checked_at >= self.min_interval_s:
                    self._reload_if_changed()
                    self._checked_at = self._clock()
        return self._policy

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload_if_changed(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.error = exc
            logger.error("%s; keeping the policy loaded before (sha256 %s)", exc, self._policy.digest[:12])
            return
        self.error = None
        if policy.digest == self._policy.digest:
            return
        old, self._policy = self._policy, policy
        logger.warning("policy %s changed (sha256 %s -> %s)", self.path, old.digest[:12], policy.digest[:12])
        if self._on_change is not None:
            self._on_change(old, policy)
