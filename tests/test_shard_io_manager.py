"""Shard results as Parquet files: the writer, the IO manager in real Dagster runs, combining."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from agent_pipelines.batch.items import shard_keys
from resources.shard_io_manager import (
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    ShardFile,
    ShardParquetIOManager,
    ShardWriter,
    iter_result_batches,
    read_results,
    write_combined,
)

SHARDS = dg.StaticPartitionsDefinition(shard_keys(3))


def result(item_id: str, shard: str = "shard-00", **overrides) -> dict:
    row = {
        "item_id": item_id,
        "item": {"text": f"item {item_id}", "n": 1},
        "shard": shard,
        "node": "summarise",
        "status": "ok",
        "output": f"summary of {item_id}",
        "latency_ms": 12.5,
        "tokens_in": 10,
        "tokens_out": 3,
        "attempts": 1,
    }
    return {**row, **overrides}


def write_shard(
    path: Path, count: int, shard: str = "shard-00", flush_rows: int = 1000
) -> ShardFile:
    with ShardWriter(path, flush_rows=flush_rows) as writer:
        for i in range(count):
            writer.write(result(f"{shard}-{i}", shard))
    assert writer.result is not None
    return writer.result


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*.tmp"))


def test_schema_has_exactly_the_result_columns() -> None:
    assert RESULT_COLUMNS == (
        "item_id", "item", "shard", "node", "status", "output", "error",
        "latency_ms", "tokens_in", "tokens_out", "attempts", "finished_at",
        "execution", "prompt_version", "checks_passed", "check_failures",
    )  # fmt: skip
    assert str(RESULT_SCHEMA.field("finished_at").type) == "timestamp[us, tz=UTC]"
    assert str(RESULT_SCHEMA.field("attempts").type) == "int32"


def test_writer_round_trip_in_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "out" / "shard-00.parquet"
    finished = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    with ShardWriter(path, flush_rows=4) as writer:
        writer.write_rows(result(str(i), finished_at=finished) for i in range(9))
        writer.write(
            result(
                "bad",
                status="failed",
                output=None,
                error="timeout",
                latency_ms=None,
                tokens_in=None,
                tokens_out=None,
                attempts=3,
                item='{"raw": true}',
            )
        )
        assert writer.rows == 10

    assert writer.result == ShardFile(path=str(path), rows=10)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # 4 + 4 + 2: never more buffered
    assert pq.read_schema(path).equals(RESULT_SCHEMA)
    frame = read_results(path)
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert len(frame) == 10
    first = frame.iloc[0]
    assert json.loads(first["item"]) == {"text": "item 0", "n": 1}
    assert first["finished_at"] == pd.Timestamp(finished)
    failed = frame.iloc[-1]
    assert (failed["status"], failed["error"], failed["attempts"], failed["item"]) == (
        "failed",
        "timeout",
        3,
        '{"raw": true}',
    )
    assert (
        pd.isna(failed["output"]) and pd.isna(failed["latency_ms"]) and pd.isna(failed["tokens_in"])
    )
    assert frame["finished_at"].iloc[-1].tzinfo is not None  # defaulted to now, in UTC
    assert leftovers(tmp_path) == []


def test_empty_shard_is_a_valid_file(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "empty.parquet", 0)
    assert shard.rows == 0
    assert pq.read_schema(shard.path).equals(RESULT_SCHEMA)
    assert read_results(shard.path).empty


def test_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "shard-00.parquet"
    write_shard(path, 3)
    with pytest.raises(RuntimeError, match="agent down"), ShardWriter(path, flush_rows=2) as writer:
        for i in range(5):
            writer.write(result(f"new-{i}"))
        raise RuntimeError("agent down")

    assert writer.result is None
    assert list(read_results(path)["item_id"]) == ["shard-00-0", "shard-00-1", "shard-00-2"]
    assert leftovers(tmp_path) == []


def test_rows_are_checked(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "x.parquet") as writer:
        with pytest.raises(ValueError, match="unknown result columns"):
            writer.write({**result("1"), "typo": 1})
        with pytest.raises(ValueError, match="status"):
            writer.write(result("1", status="done"))
        with pytest.raises(ValueError, match="lacks node"):
            writer.write({k: v for k, v in result("1").items() if k != "node"})


def test_path_for_keeps_keys_apart(tmp_path: Path) -> None:
    manager = ShardParquetIOManager(base_dir=str(tmp_path))
    key = dg.AssetKey(["batch", "summaries"])
    assert (
        manager.path_for(key, "shard-00") == tmp_path / "batch" / "summaries" / "shard-00.parquet"
    )
    assert manager.path_for(key, None) == tmp_path / "batch" / "summaries" / "all.parquet"
    partition_keys = [
        "EU West",
        "eu west",
        "a/b",
        "a%2Fb",
        "..",
        ".hidden",
        "x" * 400,
        "x" * 401,
        "EU",
        "eu",
    ]
    paths = [manager.path_for(key, k) for k in partition_keys]
    assert len({str(p).lower() for p in paths}) == len(paths)  # even on case-insensitive disks
    assert all(p.parent == tmp_path / "batch" / "summaries" for p in paths)
    assert all(len(p.name) < 255 and not p.name.startswith(".") for p in paths)


def test_base_dir_defaults_to_dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert ShardParquetIOManager().path_for(dg.AssetKey("a"), None) == (
        tmp_path / "storage" / "agent_pipelines" / "a" / "all.parquet"
    )
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(dg.DagsterInvariantViolationError, match="base_dir or \\$DAGSTER_HOME"):
        ShardParquetIOManager().path_for(dg.AssetKey("a"), None)


@dg.asset(partitions_def=SHARDS, backfill_policy=dg.BackfillPolicy.single_run())
def summaries(
    context: dg.AssetExecutionContext, io_manager: dg.ResourceParam[ShardParquetIOManager]
):  # a ShardFile, or {partition_key: ShardFile} when one run covers several shards
    """Streams each shard's rows straight into its final file through the IO manager."""
    files = {}
    for key in context.partition_keys:
        with io_manager.open_writer(context.asset_key, key, flush_rows=2) as writer:
            for i in range(int(key[-2:]) + 2):
                writer.write(result(f"{key}-{i}", key))
        files[key] = writer.close()
    return files if len(files) > 1 else files[context.partition_key]


RECEIVED: dict[str, object] = {}


@dg.asset
def report(summaries: dict[str, str]) -> pd.DataFrame:
    RECEIVED["report"] = summaries
    rows = sum(batch.num_rows for batch in iter_result_batches(summaries.values(), batch_rows=2))
    return pd.DataFrame({"shards": [len(summaries)], "rows": [rows]})


@dg.asset(partitions_def=SHARDS)
def checked(summaries: dict[str, str]) -> None:
    RECEIVED["checked"] = summaries


@dg.asset
def final_report(report: str) -> None:
    RECEIVED["final_report"] = report


def materialization_metadata(result: dg.ExecuteInProcessResult, node: str) -> list[dict]:
    return [dict(m.metadata) for m in result.asset_materializations_for_node(node)]


def test_partitioned_asset_hands_paths_downstream(tmp_path: Path) -> None:
    manager = ShardParquetIOManager(base_dir=str(tmp_path / "results"))
    resources = {"io_manager": manager}
    all_assets = [summaries, report, checked, final_report]
    RECEIVED.clear()
    with dg.instance_for_test() as instance:
        run = dg.materialize(
            [summaries], partition_key="shard-01", instance=instance, resources=resources
        )
        shard_01 = manager.path_for(summaries.key, "shard-01")
        assert materialization_metadata(run, "summaries") == [
            {"path": dg.MetadataValue.path(str(shard_01)), "rows": dg.MetadataValue.int(3)}
        ]
        assert len(read_results(shard_01)) == 3

        # An unpartitioned downstream asset gets every upstream partition that has a file.
        run = dg.materialize(all_assets, selection=[report], instance=instance, resources=resources)
        assert RECEIVED["report"] == {"shard-01": str(shard_01)}
        warnings = [e.message for e in instance.all_logs(run.run_id) if e.level >= 30]
        assert any(
            "2 partition(s) have no results file" in w and "shard-00, shard-02" in w
            for w in warnings
        )

        # A partitioned downstream asset gets its own partition's path, still as a dict.
        dg.materialize(
            all_assets,
            selection=[checked],
            partition_key="shard-01",
            instance=instance,
            resources=resources,
        )
        assert RECEIVED["checked"] == {"shard-01": str(shard_01)}

        # One run over a range of partitions (single-run backfill): one file per partition.
        run = dg.materialize(
            [summaries],
            instance=instance,
            resources=resources,
            tags={
                "dagster/asset_partition_range_start": "shard-00",
                "dagster/asset_partition_range_end": "shard-02",
            },
        )
        assert len(run.asset_materializations_for_node("summaries")) == 3
        assert materialization_metadata(run, "summaries")[0]["rows"] == dg.MetadataValue.int(
            2 + 3 + 4
        )

        # Unpartitioned DataFrame output -> all.parquet, loaded downstream as a path string.
        dg.materialize(
            all_assets, selection=[report, final_report], instance=instance, resources=resources
        )
        report_path = manager.path_for(report.key, None)
        assert RECEIVED["final_report"] == str(report_path)
        assert read_results(report_path).to_dict("records") == [{"shards": 3, "rows": 9}]

    assert leftovers(tmp_path) == []


def test_shard_file_written_elsewhere_is_moved_into_place(tmp_path: Path) -> None:
    @dg.asset(partitions_def=SHARDS)
    def elsewhere(context: dg.AssetExecutionContext) -> ShardFile:
        return write_shard(
            tmp_path / "scratch" / f"{context.partition_key}.parquet", 2, context.partition_key
        )

    manager = ShardParquetIOManager(base_dir=str(tmp_path / "results"))
    with dg.instance_for_test() as instance:
        dg.materialize(
            [elsewhere],
            partition_key="shard-02",
            instance=instance,
            resources={"io_manager": manager},
        )
    target = manager.path_for(elsewhere.key, "shard-02")
    assert len(read_results(target)) == 2
    assert not (tmp_path / "scratch" / "shard-02.parquet").exists()


def test_missing_unpartitioned_input_is_a_clear_error(tmp_path: Path) -> None:
    manager = ShardParquetIOManager(base_dir=str(tmp_path))
    missing = pytest.raises(FileNotFoundError, match="no results for report .*materialize it first")
    with dg.instance_for_test() as instance, missing:
        dg.materialize(
            [summaries, report, final_report],
            selection=[final_report],
            instance=instance,
            resources={"io_manager": manager},
        )


def test_write_combined_streams_every_shard(tmp_path: Path) -> None:
    paths = [
        write_shard(tmp_path / f"{key}.parquet", n, key, flush_rows=3).path
        for key, n in zip(shard_keys(4), [5, 0, 7, 1], strict=True)
    ]
    target = tmp_path / "combined" / "all.parquet"

    assert write_combined(paths, target) == 13
    assert all(batch.num_rows <= 4 for batch in iter_result_batches(paths, batch_rows=4))
    combined = read_results(target)
    assert len(combined) == 13
    assert combined["shard"].value_counts().to_dict() == {
        "shard-00": 5,
        "shard-02": 7,
        "shard-03": 1,
    }
    assert pq.read_schema(target).equals(RESULT_SCHEMA)
    assert write_combined([], tmp_path / "none.parquet") == 0
    assert pq.read_schema(tmp_path / "none.parquet").equals(RESULT_SCHEMA)
    assert leftovers(tmp_path) == []
