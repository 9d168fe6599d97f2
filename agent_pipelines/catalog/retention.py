"""The catalog's top-level `retention:`: how long execution records stay in the hot tables.

It is a catalog block (not an environment variable) because it is a decision the platform's
owners review and version like the rest of the catalog, and it is validated the same way (file,
line, field). One block for the whole catalog: records of every task share the tables, and a
second block in another file is an error rather than a silent override.

Only terminal executions (succeeded, failed, unknown, missed, skipped) created more than
`keep_days` ago are moved; they go to the archive tables (`archive: true`, searchable with
`executions list --archived`) or are deleted, `batch_size` rows per short transaction, at most
`tick_budget` of work per sensor tick, so the scheduler's own writes never wait long.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.spec import Spec

Duration = Annotated[float, BeforeValidator(parse_duration)]


class RetentionSpec(Spec):
    keep_days: float = Field(
        ge=1,
        description="terminal executions created longer ago than this are archived or deleted "
        "(at least 1: the misfire policy and catch-ups read the last day's records)",
    )
    archive: bool = Field(default=True, description="move them to the archive tables; false deletes them")
    batch_size: int = Field(default=1000, ge=1, le=10_000, description="rows per transaction")
    tick_budget: Duration = Field(default=20.0, gt=0, le=50, description="work per sensor tick (a tick must end within 60 s)")
    every: Duration = Field(default=300.0, ge=30, description="how often the retention sensor runs")
    pause: Duration = Field(default=0.05, ge=0, le=5, description="between batches, so other writers go first")
