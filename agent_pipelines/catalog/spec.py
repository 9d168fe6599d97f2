"""The base of every catalog spec: unknown fields are errors, values are frozen and trimmed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

ENV_VAR_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Names of agents, tasks, fleets, ...: lower_snake_case, used as Dagster names.
NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def owner_shorthand(value: Any) -> Any:
    """A bare team name is a Dagster team owner (`research` -> `team:research`)."""
    if isinstance(value, str) and value and ":" not in value and "@" not in value:
        return f"team:{value}"
    return value
