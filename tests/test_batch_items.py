"""Items files of batch tasks: every format, ids, shards, partition keys, and flat memory."""

from __future__ import annotations

import collections
import datetime as dt
import json
import tracemalloc
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent_pipelines.batch.items import (
    EMPTY_PARTITION_KEY,
    ITEM_FORMATS,
    Item,
    distinct_values,
    item_format,
    partition_key_for,
    read_item_batches,
    shard_keys,
    shard_of,
)

ROWS = [
    {"sku": "A-1", "region": "EU West", "price": 10, "note": "first"},
    {"sku": "B-2", "region": "US", "price": 20, "note": ""},
    {"sku": "C-3", "region": "EU West", "price": 30, "note": 'a, quoted "note"'},
    {"sku": "D-4", "region": "APAC|JP", "price": 40, "note": "last"},
    {"sku": "E-5", "region": "", "price": 50, "note": "no region"},
]


def write_items(directory: Path, fmt: str, rows: list[dict] = ROWS) -> Path:
    if fmt == "csv":
        path = directory / "items.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "parquet":
        path = directory / "items.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = directory / "items.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def all_items(path: Path, **options) -> list[Item]:
    return [item for batch in read_item_batches(path, **options) for item in batch]


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_every_format_reads_ids_from_a_column(tmp_path: Path, fmt: str) -> None:
    items = all_items(write_items(tmp_path, fmt), id_column="sku", batch_rows=2)

    assert [item.id for item in items] == ["A-1", "B-2", "C-3", "D-4", "E-5"]
    assert items[2].fields["note"] == 'a, quoted "note"'
    assert items[0].fields["region"] == "EU West"
    # CSV keeps values as written; Parquet and JSONL keep their types as plain Python values.
    assert items[0].fields["price"] == ("10" if fmt == "csv" else 10)
    assert type(items[0].fields["price"]) is (str if fmt == "csv" else int)


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_ids_default_to_row_numbers(tmp_path: Path, fmt: str) -> None:
    items = all_items(write_items(tmp_path, fmt), batch_rows=3)
    assert [item.id for item in items] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_batches_never_exceed_batch_rows(tmp_path: Path, fmt: str) -> None:
    rows = [{"n": i, "text": f"row {i}"} for i in range(2_345)]
    sizes = [
        len(batch) for batch in read_item_batches(write_items(tmp_path, fmt, rows), batch_rows=500)
    ]
    assert sizes == [500, 500, 500, 500, 345]


def test_parquet_values_become_plain_python(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "score": pa.array([1.5, float("nan")], pa.float64()),
            "flag": pa.array([True, None], pa.bool_()),
            "at": pa.array(
                [dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), None], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, path)

    first, second = all_items(path, id_column="id")

    assert (first.id, second.id) == ("1", "2")
    assert first.fields == {"id": 1, "score": 1.5, "flag": True, "at": "2024-05-01T12:00:00+00:00"}
    assert second.fields == {"id": 2, "score": None, "flag": None, "at": None}
    json.dumps(first.fields)  # plain values: JSON-encodable as they are


def test_jsonl_skips_blank_lines_and_keeps_nested_values(tmp_path: Path) -> None:
    path = tmp_path / "items.ndjson"
    path.write_text('{"id": "x", "tags": ["a", "b"], "meta": {"n": NaN}}\n\n{"id": "y"}\n')
    items = all_items(path, id_column="id")
    assert [item.id for item in items] == ["x", "y"]
    assert items[0].fields == {"id": "x", "tags": ["a", "b"], "meta": {"n": None}}


def test_item_format_by_suffix_or_declaration(tmp_path: Path) -> None:
    assert item_format(Path("a.CSV"), None) == "csv"
    assert item_format(Path("a.pq"), None) == "parquet"
    assert item_format(Path("a.ndjson"), None) == "jsonl"
    assert item_format(Path("a.txt"), "JSONL") == "jsonl"
    with pytest.raises(ValueError, match=r"suffix '\.txt'.*\.csv"):
        item_format(Path("a.txt"), None)
    with pytest.raises(ValueError, match="unknown items format 'xlsx'"):
        item_format(Path("a.csv"), "xlsx")


def test_unknown_suffix_fails_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "items.tsv"
    path.write_text("a\tb\n")
    with pytest.raises(ValueError, match="cannot tell the items format"):
        next(read_item_batches(path))


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_missing_id_column_names_the_columns_present(tmp_path: Path, fmt: str) -> None:
    path = write_items(tmp_path, fmt)
    with pytest.raises(ValueError, match=r"'uid'.*sku, region, price, note"):
        next(read_item_batches(path, id_column="uid"))


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_empty_id_names_the_row(tmp_path: Path, fmt: str) -> None:
    rows = [{"sku": "A"}, {"sku": "B"}, {"sku": "" if fmt == "csv" else None}]
    path = write_items(tmp_path, fmt, rows)
    with pytest.raises(ValueError, match=r"row 2 \(0-based\): empty id in column 'sku'"):
        all_items(path, id_column="sku", batch_rows=2)


def test_header_only_and_empty_files_have_no_items(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("sku,region\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert all_items(header_only, id_column="sku") == []
    assert all_items(empty) == []
    with pytest.raises(ValueError, match="no column 'sku'"):
        all_items(empty, id_column="sku")


def test_shard_keys_sort_in_shard_order() -> None:
    assert shard_keys(1) == ["shard-00"]
    assert shard_keys(3) == ["shard-00", "shard-01", "shard-02"]
    assert shard_keys(100)[-1] == "shard-99"
    keys = shard_keys(101)
    assert (keys[0], keys[-1]) == ("shard-000", "shard-100")
    assert keys == sorted(keys)
    with pytest.raises(ValueError):
        shard_keys(0)


def test_shard_assignment_is_pinned() -> None:
    """crc32 of the UTF-8 id: a change here would move items of running tasks between shards."""
    keys = shard_keys(16)
    assert {
        item_id: shard_of(item_id, keys) for item_id in ["0", "1", "42", "item-7", "ünïcode"]
    } == {
        "0": "shard-01",
        "1": "shard-07",
        "42": "shard-08",
        "item-7": "shard-12",
        "ünïcode": "shard-10",
    }
    assert shard_of("42", shard_keys(4)) == "shard-00"


def test_shards_are_roughly_even() -> None:
    keys = shard_keys(16)
    counts = collections.Counter(shard_of(str(i), keys) for i in range(10_000))
    assert set(counts) == set(keys)
    assert min(counts.values()) > 0.8 * 10_000 / 16
    assert max(counts.values()) < 1.2 * 10_000 / 16


NASTY_VALUES = [
    "EU West",
    "a...b",
    "line\nbreak",
    "tab\there",
    "bell\a",
    "nul\0",
    "a|b",
    "x,y",
    "[z]",
    "  padded  ",
    "x" * 300,
    "...",
    EMPTY_PARTITION_KEY,
    "ünïcode/ß",
    "2024-01-01T00:00:00",
    "para\u2028graph",
]


def test_partition_keys_stay_readable_and_distinct() -> None:
    assert partition_key_for("EU West") == "EU West"
    assert partition_key_for("ünïcode/ß") == "ünïcode/ß"
    assert (
        partition_key_for(None)
        == partition_key_for("")
        == partition_key_for(float("nan"))
        == EMPTY_PARTITION_KEY
    )
    assert partition_key_for(3) == "3"
    assert partition_key_for(pd.Timestamp("2024-01-01", tz="UTC")) == "2024-01-01T00:00:00+00:00"
    # Pinned: these keys name partitions of running tasks, so they must never change.
    assert partition_key_for("a...b") == "a_b~fce9c84a"
    assert partition_key_for("a|b") == "a_b~9abe6de2"
    assert partition_key_for("x\ny") == "x y~af5b2e48"
    assert partition_key_for("  padded  ") == "padded~4809cd5b"
    assert partition_key_for("a_b") == "a_b"  # a cleaned value never takes another's key
    keys = [partition_key_for(value) for value in NASTY_VALUES]
    assert len(set(keys)) == len(keys)
    assert all(len(key) <= 100 for key in keys)


def test_partition_keys_are_valid_for_dagster() -> None:
    keys = sorted({partition_key_for(value) for value in NASTY_VALUES})

    dg.StaticPartitionsDefinition(keys)  # raises on "..." and control characters
    dg.MultiPartitionsDefinition(  # rejects "|", ",", "[" and "]" in its dimensions
        {
            "region": dg.StaticPartitionsDefinition(keys),
            "shard": dg.StaticPartitionsDefinition(shard_keys(2)),
        }
    )
    dynamic = dg.DynamicPartitionsDefinition(name="regions")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("regions", keys)
        assert sorted(dynamic.get_partition_keys(dynamic_partitions_store=instance)) == keys
    with pytest.raises(dg.DagsterInvalidDefinitionError):
        dg.StaticPartitionsDefinition(["a...b"])  # what the cleaning protects against


@pytest.mark.parametrize("fmt", ITEM_FORMATS)
def test_distinct_values(tmp_path: Path, fmt: str) -> None:
    path = write_items(tmp_path, fmt)
    assert distinct_values(path, "region") == sorted(
        [EMPTY_PARTITION_KEY, "EU West", "US", partition_key_for("APAC|JP")]
    )
    if fmt == "jsonl":  # JSONL has no header: a field missing from a row is an empty value
        assert distinct_values(path, "zone") == [EMPTY_PARTITION_KEY]
    else:
        with pytest.raises(ValueError, match="no column 'zone'"):
            distinct_values(path, "zone")


def test_distinct_values_stream_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("id,region\n")
        for i in range(50_000):
            out.write(f"{i},region-{i % 7}\n")
    assert distinct_values(path, "region") == [f"region-{i}" for i in range(7)]


def test_memory_stays_flat_over_200k_rows(tmp_path: Path) -> None:
    """200,000 rows stream through batches of 1,000 (~2 MB peak; holding them all: ~110 MB)."""
    path = tmp_path / "many.csv"
    with path.open("w") as out:
        out.write("id,prompt,region,score\n")
        for i in range(200_000):
            out.write(
                f"item-{i},Summarise document number {i} for the quarterly review,"
                f"r{i % 13},{i * 0.5}\n"
            )

    tracemalloc.start()
    try:
        seen = 0
        largest = 0
        for batch in read_item_batches(path, id_column="id", batch_rows=1000):
            seen += len(batch)
            largest = max(largest, len(batch))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == 200_000
    assert largest == 1000
    assert peak < 20 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
