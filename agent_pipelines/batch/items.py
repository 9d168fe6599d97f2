"""Items of a batch task: read in bounded batches, assigned to shards, grouped by column value.

Item files can hold 100,000+ rows, so everything here streams: no function holds the whole
file, and nothing keeps a set of all ids (duplicates are the caller's problem).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import math
import re
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ITEM_FORMATS = ("csv", "parquet", "jsonl")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

#: Partition key for a missing, null or empty column value.
EMPTY_PARTITION_KEY = "(empty)"
#: Longer keys are cut and suffixed with a hash: they stay readable in the UI and unique.
MAX_PARTITION_KEY_LENGTH = 100
# Dagster rejects "..." (its partition range syntax) and control characters in partition keys;
# "|", ",", "[" and "]" are rejected in the dimensions of a MultiPartitionsDefinition and
# delimit partition selections, so they are replaced too.
_RANGE_DELIMITER = "..."
_RESERVED_CHARACTERS = re.compile(r"[|,\[\]]")


@dataclass(frozen=True)
class Item:
    """One row of an items file: one agent prompt. `fields` holds plain Python values."""

    id: str
    fields: dict[str, Any]


def item_format(path: Path, declared: str | None = None) -> str:
    """The declared format when given, else the one the file suffix names."""
    if declared is not None:
        fmt = declared.strip().lower()
        if fmt not in ITEM_FORMATS:
            raise ValueError(
                f"unknown items format {declared!r} for {path}: "
                f"expected one of {', '.join(ITEM_FORMATS)}"
            )
        return fmt
    fmt = _SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the items format of {path} from its suffix {Path(path).suffix!r}: "
            f"use one of {', '.join(sorted(_SUFFIX_FORMATS))} or declare the format "
            f"({', '.join(ITEM_FORMATS)})"
        )
    return fmt


def read_item_batches(
    path: Path,
    *,
    format: str | None = None,
    id_column: str | None = None,
    batch_rows: int = 1000,
) -> Iterator[list[Item]]:
    """Stream `path` as lists of at most `batch_rows` items.

    The id is the `id_column` value as a string, else the 0-based row number. CSV values stay
    strings exactly as written ("" for an empty cell); Parquet and JSONL keep their types.
    """
    fmt = item_format(Path(path), format)
    row_number = 0
    for rows in _iter_row_batches(Path(path), fmt, batch_rows, required_column=id_column):
        items = []
        for fields in rows:
            items.append(Item(id=_item_id(fields, id_column, row_number, path), fields=fields))
            row_number += 1
        yield items


def shard_keys(count: int) -> list[str]:
    """`shard-00` … `shard-NN`; zero-padded so the keys sort in shard order."""
    if count < 1:
        raise ValueError(f"a batch task needs at least one shard, got {count}")
    width = max(2, len(str(count - 1)))
    return [f"shard-{index:0{width}d}" for index in range(count)]


def shard_of(item_id: str, keys: Sequence[str]) -> str:
    """The shard of an item: crc32, not `hash()`, so every process and Python agrees."""
    if not keys:
        raise ValueError("shard_of needs at least one shard key")
    return keys[zlib.crc32(item_id.encode("utf-8")) % len(keys)]


def partition_key_for(value: Any) -> str:
    """A readable Dagster partition key for a column value, the same on every run.

    Values Dagster accepts stay as they are ("EU West"). Others are cleaned (control
    characters, "...", "|", ",", "[", "]", outer whitespace, excess length) and get "~" and a
    hash of the original, so two different values do not share a key.
    """
    value = _plain(value)
    if value is None or (isinstance(value, str) and value == ""):
        return EMPTY_PARTITION_KEY
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    cleaned = "".join(" " if _is_line_or_control(ch) else ch for ch in text)
    cleaned = _RESERVED_CHARACTERS.sub("_", cleaned)
    while _RANGE_DELIMITER in cleaned:
        cleaned = cleaned.replace(_RANGE_DELIMITER, "_")
    cleaned = cleaned.strip(" ")
    if cleaned == text and text != EMPTY_PARTITION_KEY and len(text) <= MAX_PARTITION_KEY_LENGTH:
        return text
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    cleaned = cleaned[: MAX_PARTITION_KEY_LENGTH - len(digest) - 1].rstrip(" ")
    return f"{cleaned}~{digest}" if cleaned else f"~{digest}"


def _is_line_or_control(ch: str) -> bool:
    # Only categories whose members never change between Unicode versions: keys must not
    # depend on the Python version.
    return unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"


def distinct_values(path: Path, column: str, *, format: str | None = None) -> list[str]:
    """Sorted distinct partition keys of `column`, read in batches (only the set is kept)."""
    fmt = item_format(Path(path), format)
    keys: set[str] = set()
    for rows in _iter_row_batches(
        Path(path), fmt, 10_000, required_column=column, columns=[column]
    ):
        keys.update(partition_key_for(row.get(column)) for row in rows)
    return sorted(keys)


def _iter_row_batches(
    path: Path,
    fmt: str,
    batch_rows: int,
    *,
    required_column: str | None = None,
    columns: list[str] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    if fmt == "csv":
        yield from _csv_batches(path, batch_rows, required_column, columns)
    elif fmt == "parquet":
        yield from _parquet_batches(path, batch_rows, required_column, columns)
    else:
        yield from _jsonl_batches(path, batch_rows, required_column, columns)


def _csv_batches(
    path: Path, batch_rows: int, required_column: str | None, columns: list[str] | None
) -> Iterator[list[dict[str, Any]]]:
    options: dict[str, Any] = {"dtype": str, "keep_default_na": False, "encoding": "utf-8-sig"}
    try:
        header = list(pd.read_csv(path, nrows=0, **options).columns)
    except pd.errors.EmptyDataError:
        header = []
    _require_column(required_column, header, path)
    if not header:
        return
    with pd.read_csv(path, chunksize=batch_rows, usecols=columns, **options) as reader:
        for chunk in reader:
            yield [{str(k): _plain(v) for k, v in row.items()} for row in chunk.to_dict("records")]


def _parquet_batches(
    path: Path, batch_rows: int, required_column: str | None, columns: list[str] | None
) -> Iterator[list[dict[str, Any]]]:
    with pq.ParquetFile(path) as parquet:
        _require_column(required_column, parquet.schema_arrow.names, path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            rows = batch.to_pylist()
            if rows:
                yield [{str(k): _plain(v) for k, v in row.items()} for row in rows]


def _jsonl_batches(
    path: Path, batch_rows: int, required_column: str | None, columns: list[str] | None
) -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}, line {line_number}: not valid JSON ({exc.msg})"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}, line {line_number}: each line must be a JSON object, "
                    f"got {type(row).__name__}"
                )
            if required_column is not None and required_column not in row and columns is None:
                raise ValueError(
                    f"{path}, line {line_number}: no {required_column!r} field "
                    f"(fields present: {', '.join(map(str, row)) or 'none'})"
                )
            if columns is not None:
                row = {name: row.get(name) for name in columns}
            rows.append({str(k): _plain(v) for k, v in row.items()})
            if len(rows) >= batch_rows:
                yield rows
                rows = []
    if rows:
        yield rows


def _require_column(column: str | None, present: Sequence[str], path: Path) -> None:
    if column is not None and column not in present:
        raise ValueError(
            f"{path} has no column {column!r} "
            f"(columns present: {', '.join(map(str, present)) or 'none'})"
        )


def _item_id(fields: dict[str, Any], id_column: str | None, row_number: int, path: Path) -> str:
    if id_column is None:
        return str(row_number)
    value = fields.get(id_column)
    item_id = "" if value is None else value if isinstance(value, str) else str(value)
    if not item_id.strip():
        raise ValueError(f"{path}, row {row_number} (0-based): empty id in column {id_column!r}")
    return item_id


def _plain(value: Any) -> Any:
    """numpy/pandas/Arrow values as JSON-friendly Python values; NaN and NaT become None."""
    if value is None or type(value) is str:  # the common case (every CSV value) first
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (pd.Timedelta, dt.timedelta)):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, as written; a float could change it
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return str(value)
