"""The base of every catalog spec: unknown fields are errors, values are frozen and trimmed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

ENV_VAR_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
