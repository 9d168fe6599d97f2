"""Tables in Dagster metadata, as Dagster's own table type (sortable, typed columns in the UI)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

#: Rows kept in one metadata table (every entry is stored with each event).
MAX_ROWS = 500


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return str(value)


def table(columns: Mapping[str, str], rows: Sequence[Mapping[str, Any]], limit: int = MAX_ROWS) -> dg.MetadataValue:
    """`columns`: name -> Dagster column type (`string`, `int`, `float`, `bool`)."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()])
    records = [dg.TableRecord({name: _cell(row.get(name)) for name in columns}) for row in rows[:limit]]
    return dg.MetadataValue.table(records=records, schema=schema)
