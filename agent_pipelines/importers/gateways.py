"""The gateways to import from: one given on the command line, a `--gateways` file, or a fleet.

A gateways file is a YAML list. Each entry is one gateway (it becomes an agent of the catalog
under its `name`) or a fleet entry (`fleet:` with `nodes` or `base_url_template` + `count`)
that expands to one gateway per node, named `<fleet>_<node>`:

    - name: claw_eu
      kind: openclaw
      base_url: http://10.0.0.5:18789
      auth_env: CLAW_EU_TOKEN
      timezone: Europe/Berlin        # the host's zone, for cron jobs without one
    - fleet: claws
      kind: openclaw
      base_url_template: http://claw-{i}.internal:18789
      count: 40
      auth_env: CLAW_TOKEN
    - name: hermes_ops
      kind: hermes
      base_url: http://10.0.0.9:8642
      auth_env: HERMES_OPS_KEY
      state_dir: /srv/hermes/.hermes # optional: its HERMES_HOME (time zone; jobs when the API is down)
"""

from __future__ import annotations

import os
import shlex
import zoneinfo
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from agent_pipelines.catalog.model import NAME_RE, FleetNodeSpec
from agent_pipelines.catalog.spec import ENV_VAR_RE, Spec, owner_shorthand

Kind = Literal["openclaw", "hermes"]
DEFAULT_BASE_URLS: dict[str, str] = {"openclaw": "http://127.0.0.1:18789", "hermes": "http://127.0.0.1:8642"}
#: Gateway fields a fleet entry shares with each of its nodes.
_SHARED = ("kind", "auth_env", "auth_file", "cli", "timezone", "owner", "agent_ids", "env")


def _argv(value: Any) -> Any:
    return shlex.split(value) if isinstance(value, str) else value


class GatewaySpec(Spec):
    """One OpenClaw gateway or Hermes Agent installation to import from (or export to)."""

    name: Annotated[str, Field(pattern=NAME_RE, description="the catalog agent its jobs go to")]
    kind: Kind
    base_url: str | None = None
    auth_env: Annotated[str, Field(pattern=ENV_VAR_RE)] | None = None
    auth_file: str | None = None
    cli: Annotated[list[str], BeforeValidator(_argv)] | None = Field(
        default=None,
        description="OpenClaw: go through its CLI (`openclaw`, or `node .../openclaw.mjs`) instead of its RPC",
    )
    state_dir: str | None = Field(
        default=None, description="OpenClaw: its state directory (~/.openclaw); Hermes: its HERMES_HOME (~/.hermes)"
    )
    timezone: str | None = Field(default=None, description="the gateway host's time zone, for cron jobs without one")
    owner: Annotated[str, BeforeValidator(owner_shorthand)] | None = None
    agent_ids: list[str] | None = Field(default=None, description="OpenClaw: only jobs of these agents")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the CLI (never secrets)")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _checks(self) -> GatewaySpec:
        if self.base_url is None:
            object.__setattr__(self, "base_url", DEFAULT_BASE_URLS[self.kind])
        if self.auth_env and self.auth_file:
            raise ValueError("set at most one of `auth_env` and `auth_file`")
        if self.kind == "hermes" and (self.cli or self.agent_ids):
            raise ValueError("`cli` and `agent_ids` are OpenClaw settings; Hermes is read through its API server")
        return self

    def token(self) -> str | None:
        """The bearer token, read now from `auth_env` or `auth_file` (None when neither is set)."""
        if self.auth_env:
            value = os.environ.get(self.auth_env)
            if not value:
                raise GatewayError(f"gateway {self.name!r}: ${self.auth_env} is not set")
            return value
        if self.auth_file:
            try:
                return Path(self.auth_file).expanduser().read_text().strip()
            except OSError as exc:
                raise GatewayError(f"gateway {self.name!r}: cannot read auth_file: {exc}") from None
        return None


class GatewayError(Exception):
    """A gateway that cannot be read, written or reached; the message names it."""


def _fleet_nodes(entry: dict[str, Any]) -> list[FleetNodeSpec]:
    if entry.get("nodes"):
        return [FleetNodeSpec.model_validate(node) for node in entry["nodes"]]
    template, count = entry.get("base_url_template"), entry.get("count")
    if not isinstance(template, str) or "{i}" not in template or not isinstance(count, int) or count < 1:
        raise ValueError("a fleet entry needs `nodes`, or `base_url_template` with `{i}` and `count`")
    return [FleetNodeSpec(name=f"node{i}", base_url=template.replace("{i}", str(i))) for i in range(count)]


def _expand(entry: Any, where: str) -> list[GatewaySpec]:
    if not isinstance(entry, dict):
        raise GatewayError(f"{where}: each entry must be a mapping, got {type(entry).__name__}")
    try:
        if "fleet" not in entry:
            return [GatewaySpec.model_validate(entry)]
        unknown = set(entry) - {"fleet", "nodes", "base_url_template", "count", *_SHARED}
        if unknown:
            raise ValueError(f"unknown field(s) of a fleet entry: {', '.join(sorted(unknown))}")
        shared = {key: entry[key] for key in _SHARED if key in entry}
        return [
            GatewaySpec.model_validate({**shared, "name": f"{entry['fleet']}_{node.name}", "base_url": node.base_url})
            for node in _fleet_nodes(entry)
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise GatewayError(f"{where}: {field + ': ' if field else ''}{first['msg'].removeprefix('Value error, ')}") from None
    except ValueError as exc:
        raise GatewayError(f"{where}: {exc}") from None


def load_gateways(path: Path) -> list[GatewaySpec]:
    """Every gateway of a gateways file, fleets expanded; names must be unique."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GatewayError(f"{path}: {exc}") from None
    if isinstance(document, dict) and "gateways" in document:
        document = document["gateways"]
    if not isinstance(document, list):
        raise GatewayError(f"{path}: expected a list of gateways (or `gateways:` holding one)")
    gateways: list[GatewaySpec] = []
    for index, entry in enumerate(document):
        label = entry.get("name") or entry.get("fleet") if isinstance(entry, dict) else None
        gateways += _expand(entry, f"{path}: entry {index + 1}" + (f" ({label})" if label else ""))
    return check_unique(gateways)


def check_unique(gateways: Iterable[GatewaySpec]) -> list[GatewaySpec]:
    seen: set[str] = set()
    result = list(gateways)
    for gateway in result:
        if gateway.name in seen:
            raise GatewayError(f"gateway name {gateway.name!r} is used twice: names become agent names")
        seen.add(gateway.name)
    return result


def fleet_gateways(catalog: Any, fleet_name: str, **shared: Any) -> list[GatewaySpec]:
    """A catalog fleet of kind openclaw or hermes, one gateway per node (`<fleet>_<node>`)."""
    fleet = catalog.fleets.get(fleet_name)
    if fleet is None:
        raise GatewayError(f"no valid fleet {fleet_name!r} in the catalog (fleets: {', '.join(sorted(catalog.fleets)) or 'none'})")
    if fleet.kind not in DEFAULT_BASE_URLS:
        raise GatewayError(f"fleet {fleet_name!r} is of kind {fleet.kind!r}: only openclaw and hermes fleets have jobs to import")
    extra = {key: value for key, value in shared.items() if value not in (None, (), [])}
    try:
        return [
            GatewaySpec.model_validate(
                {"kind": fleet.kind, "name": node.name, "base_url": node.base_url,
                 "auth_env": node.auth_env, "auth_file": node.auth_file, **extra}
            )
            for node in fleet.node_specs
        ]
    except ValidationError as exc:
        raise GatewayError(f"fleet {fleet_name!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
