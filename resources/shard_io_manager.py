"""Shard results as Parquet files: the IO manager of batch tasks hands on paths, never payloads.

A shard can hold thousands of agent outputs, so batch steps stream rows into a `ShardWriter`
and return a `ShardFile`; downstream steps receive file paths and stream them themselves.

Where they live: under DAGSTER_HOME by default, or under any fsspec URL given by
$AGENT_PIPELINES_RESULTS_URL (`s3://bucket/prefix`, `gs://...`, `abfs://...`; credentials and
endpoints from the usual environment, e.g. AWS_ACCESS_KEY_ID and AWS_ENDPOINT_URL). On
Kubernetes every run and step is a pod of its own, so results must go to shared object storage:
a pod's disk is gone with the pod. A file is written locally first and then put whole (an
object store's put is atomic, as the local rename is): readers see the old results or the new.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from agent_pipelines.json_codec import dumps_text

#: Where batch results go when not under DAGSTER_HOME: an fsspec URL such as s3://bucket/prefix.
RESULTS_URL_ENV = "AGENT_PIPELINES_RESULTS_URL"
#: Run launchers whose runs live in pods of their own, each with a disk of its own.
POD_RUN_LAUNCHERS = frozenset({"K8sRunLauncher", "CeleryK8sRunLauncher", "EcsRunLauncher", "DockerRunLauncher"})
#: A local or remote results location.
Location = Path | UPath

RESULT_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item", pa.string(), nullable=False),  # JSON of the item's fields
        pa.field("shard", pa.string(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
        pa.field("output", pa.string()),
        pa.field("error", pa.string()),
        pa.field("latency_ms", pa.float64()),
        pa.field("tokens_in", pa.int64()),
        pa.field("tokens_out", pa.int64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # the execution (idempotency key of its due time, event, ...) the row belongs to: a
        # re-run of that execution keeps the rows that succeeded instead of sending them again
        pa.field("execution", pa.string()),
        # the prompt version the item went out with, and its answer's checks (null: not checked)
        pa.field("prompt_version", pa.string()),
        pa.field("checks_passed", pa.bool_()),
        pa.field("check_failures", pa.string()),  # JSON: check -> why, for the checks it failed
    ]
)
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
RESULT_STATUSES = ("ok", "failed")
_REQUIRED_COLUMNS = frozenset(f.name for f in RESULT_SCHEMA if not f.nullable) - {"finished_at"}

#: File name of an unpartitioned asset's results.
UNPARTITIONED_FILE = "all.parquet"
_MAX_FILE_STEM = 150

SHARD_IO_MANAGER_KEY = "shard_io_manager"


@dataclass(frozen=True)
class ShardFile:
    """A finished results file: what batch steps return instead of a DataFrame."""

    path: str
    rows: int


class ShardWriter:
    """Writes result rows to `path` in row groups of at most `flush_rows`, atomically.

    Rows go to a temporary file beside `path`, renamed over it only on a clean exit: a failed
    shard leaves the previous results (if any) untouched and no temporary file behind.
    """

    def __init__(self, path: str | Location, *, flush_rows: int = 1000, defaults: Mapping[str, Any] | None = None) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, got {flush_rows}")
        self.path = location(path)
        self.flush_rows = flush_rows
        #: columns every row gets unless it sets them itself (the execution it belongs to)
        self.defaults = dict(defaults or {})
        self.rows = 0
        self.result: ShardFile | None = None  # set by close()
        self._temp = _temp_beside(self.path)
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._aborted = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if self._aborted:
            raise RuntimeError(f"ShardWriter for {self.path} was aborted")
        if self._writer is not None or self.result is not None:
            return
        self._temp.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._temp, RESULT_SCHEMA)

    def write(self, row: Mapping[str, Any]) -> None:
        """Buffer one result row; `item` may be a dict (JSON-encoded here)."""
        if self._writer is None:
            raise RuntimeError("ShardWriter is not open: use it as a context manager")
        self._buffer.append(_result_row({**self.defaults, **row} if self.defaults else row))
        self.rows += 1
        if len(self._buffer) >= self.flush_rows:
            self.flush()

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def flush(self) -> None:
        if self._writer is None or not self._buffer:
            return
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=RESULT_SCHEMA))
        self._buffer = []

    def close(self) -> ShardFile:
        """Finish the file and move it into place; returns the `ShardFile`."""
        if self.result is not None:
            return self.result
        self.open()
        try:
            self.flush()
            assert self._writer is not None
            self._writer.close()
            self._writer = None
            _publish(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        self.result = ShardFile(path=str(self.path), rows=self.rows)
        return self.result

    def abort(self) -> None:
        """Drop everything written so far; the target file keeps its previous content."""
        self._aborted = self.result is None
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
        self._temp.unlink(missing_ok=True)


class ShardParquetIOManager(dg.ConfigurableIOManager):
    """Stores each partition of an asset as one Parquet file and loads inputs as paths.

    Partitioned upstream assets load as `{partition_key: path}` (only existing files);
    unpartitioned ones as a single path.
    """

    base_dir: str | None = None  # a directory or an fsspec URL; default $AGENT_PIPELINES_RESULTS_URL

    def configured(self) -> str | None:
        """`base_dir`, else $AGENT_PIPELINES_RESULTS_URL; None: under DAGSTER_HOME."""
        return self.base_dir or os.environ.get(RESULTS_URL_ENV)

    def root(self) -> Location:
        configured = self.configured()
        if configured:
            return location(configured)
        home = os.environ.get("DAGSTER_HOME")
        if not home:
            raise dg.DagsterInvariantViolationError(
                "ShardParquetIOManager needs base_dir or $DAGSTER_HOME "
                "to know where to write results"
            )
        return Path(home) / "storage" / "agent_pipelines"

    def is_local(self) -> bool:
        configured = self.configured()
        return configured is None or isinstance(location(configured), Path)

    def refuse_pod_local_disk(self, instance: dg.DagsterInstance) -> None:
        """Runs launched as pods (Kubernetes, ECS, Docker) lose their disk with the pod: their
        results must go to shared storage, or every result would be lost after the run."""
        launcher = type(instance.run_launcher).__name__
        if self.is_local() and launcher in POD_RUN_LAUNCHERS:
            raise dg.Failure(
                "batch results would be written to the pod's own disk, which is gone "
                f"with the pod: runs launched by {launcher} need ${RESULTS_URL_ENV} set to shared object "
                "storage, e.g. s3://bucket/prefix (see docs/kubernetes.md)",
                allow_retries=False,
            )

    def path_for(self, asset_key: dg.AssetKey, partition_key: str | None) -> Location:
        directory = self.root().joinpath(*(_safe_name(part) for part in asset_key.path))
        if partition_key is None:
            return directory / UNPARTITIONED_FILE
        return directory / f"{_file_stem(partition_key)}.parquet"

    def open_writer(
        self,
        asset_key: dg.AssetKey,
        partition_key: str | None,
        flush_rows: int = 1000,
        defaults: Mapping[str, Any] | None = None,
    ) -> ShardWriter:
        return ShardWriter(self.path_for(asset_key, partition_key), flush_rows=flush_rows, defaults=defaults)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        asset_key = _asset_key(context)
        partition_keys = (
            list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        )
        if isinstance(obj, Mapping):
            # One run materializing several partitions (single-run backfill): one file each.
            unknown = set(obj) - set(partition_keys)
            if unknown:
                raise dg.DagsterInvariantViolationError(
                    f"{asset_key.to_user_string()}: results for partitions {sorted(unknown)} "
                    f"not in this run's partitions {partition_keys}"
                )
            stored = {key: self._store(asset_key, key, value) for key, value in obj.items()}
            context.add_output_metadata(
                {
                    "rows": sum(f.rows for f in stored.values()),
                    "partitions": len(stored),
                    "path": dg.MetadataValue.path(str(self.path_for(asset_key, None).parent)),
                }
            )
            return
        if len(partition_keys) != 1:
            raise dg.DagsterInvariantViolationError(
                f"{asset_key.to_user_string()} materializes {len(partition_keys)} partitions "
                "in one run: return a dict {partition_key: ShardFile} with one file per partition"
            )
        shard = self._store(asset_key, partition_keys[0], obj)
        context.add_output_metadata({"path": dg.MetadataValue.path(shard.path), "rows": shard.rows})

    def load_input(self, context: dg.InputContext) -> dict[str, str] | str:
        asset_key = _asset_key(context)
        if not context.has_asset_partitions:
            path = self.path_for(asset_key, None)
            if not path.exists():
                raise FileNotFoundError(
                    f"no results for {asset_key.to_user_string()} at {path}: materialize it first"
                )
            return str(path)
        paths: dict[str, str] = {}
        missing: list[str] = []
        for key in context.asset_partition_keys:
            path = self.path_for(asset_key, key)
            if path.exists():
                paths[key] = str(path)
            else:
                missing.append(key)
        if missing:
            shown = ", ".join(missing[:20]) + (
                f" … (+{len(missing) - 20})" if len(missing) > 20 else ""
            )
            context.log.warning(
                f"{asset_key.to_user_string()}: {len(missing)} partition(s) have no results file "
                f"and are left out: {shown}"
            )
        return paths

    def _store(self, asset_key: dg.AssetKey, partition_key: str | None, obj: Any) -> ShardFile:
        target = self.path_for(asset_key, partition_key)
        if isinstance(obj, ShardFile):
            source = location(obj.path)
            if not source.exists():
                raise FileNotFoundError(
                    f"{asset_key.to_user_string()}: results file {source} does not exist"
                )
            if str(source) != str(target) and not (isinstance(source, Path) and isinstance(target, Path) and source.resolve() == target.resolve()):
                _move_atomically(source, target)
            return ShardFile(path=str(target), rows=obj.rows)
        if isinstance(obj, pd.DataFrame):
            _write_atomically(pa.Table.from_pandas(obj, preserve_index=False), target)
            return ShardFile(path=str(target), rows=len(obj))
        raise dg.DagsterInvariantViolationError(
            f"ShardParquetIOManager stores a ShardFile, a pandas DataFrame or None, "
            f"not {type(obj).__name__} ({asset_key.to_user_string()})"
        )


def location(value: str | Location) -> Location:
    """A local path, or a UPath for an fsspec URL (s3://, gs://, memory://, ...)."""
    if isinstance(value, (Path, UPath)):
        return value
    text = str(value)
    if "://" in text and not text.startswith("file://"):
        return UPath(text)
    return Path(text.removeprefix("file://"))


def open_parquet(path: str | Location) -> pq.ParquetFile:
    """A results file, local or in object storage, for streaming reads."""
    where = location(path)
    if isinstance(where, Path):
        return pq.ParquetFile(where)
    return pq.ParquetFile(where.open("rb"))


def read_results(path: str | Location) -> pd.DataFrame:
    """One results file as a DataFrame: for a single shard, never for all of them at once."""
    with open_parquet(path) as parquet:
        return parquet.read().to_pandas()


def iter_result_batches(
    paths: Iterable[str | Location], batch_rows: int = 10_000
) -> Iterator[pa.RecordBatch]:
    """Stream several results files in batches of at most `batch_rows` rows."""
    for path in paths:
        with open_parquet(path) as parquet:
            yield from parquet.iter_batches(batch_size=batch_rows)


def conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch in today's `RESULT_SCHEMA`: files written before a column existed get nulls."""
    if batch.schema.equals(RESULT_SCHEMA):
        return batch
    columns = [
        batch.column(name).cast(field.type) if name in batch.schema.names else pa.nulls(batch.num_rows, field.type)
        for name, field in zip(RESULT_SCHEMA.names, RESULT_SCHEMA, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=RESULT_SCHEMA)


def write_combined(paths: Iterable[str | Location], target: str | Location, *, batch_rows: int = 10_000) -> int:
    """Stream all `paths` into one Parquet file at `target` (atomically); returns its rows."""
    target = location(target)
    temp = _temp_beside(target)
    temp.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in iter_result_batches(paths, batch_rows):
            if writer is None:
                writer = pq.ParquetWriter(temp, RESULT_SCHEMA)
            writer.write_batch(conform(batch))
            rows += batch.num_rows
        if writer is None:
            writer = pq.ParquetWriter(temp, RESULT_SCHEMA)
        writer.close()
        writer = None
        _publish(temp, target)
    except BaseException:
        if writer is not None:
            writer.close()
        temp.unlink(missing_ok=True)
        raise
    return rows


def _result_row(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(
            f"unknown result columns {sorted(unknown)}: expected {', '.join(RESULT_COLUMNS)}"
        )
    missing = _REQUIRED_COLUMNS - {k for k, v in row.items() if v is not None}
    if missing:
        raise ValueError(
            f"result row for item {row.get('item_id')!r} lacks {', '.join(sorted(missing))}"
        )
    if row["status"] not in RESULT_STATUSES:
        raise ValueError(f"result status must be one of {RESULT_STATUSES}, got {row['status']!r}")
    out = {name: row.get(name) for name in RESULT_COLUMNS}
    item = out["item"]
    if not isinstance(item, str):
        out["item"] = dumps_text(item)
    if out["finished_at"] is None:
        out["finished_at"] = dt.datetime.now(dt.UTC)
    return out


def _temp_beside(target: Location) -> Path:
    """Where a file is written before it is moved into place: beside a local target (same file
    system, so the rename is atomic), in the local temp directory for a remote one."""
    if isinstance(target, Path):
        return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    return Path(tempfile.gettempdir()) / "agent-pipelines-results" / f"{uuid.uuid4().hex}.{target.name}.tmp"


def _publish(temp: Path, target: Location) -> None:
    """Move a finished local file into place: a rename, or one whole put to object storage."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.fs.put_file(str(temp), target.path)
    finally:
        temp.unlink(missing_ok=True)


def _write_atomically(table: pa.Table, target: Location) -> None:
    temp = _temp_beside(target)
    temp.parent.mkdir(parents=True, exist_ok=True)
    try:
        pq.write_table(table, temp)
        _publish(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _move_atomically(source: Location, target: Location) -> None:
    """Rename `source` over `target`; across file systems (or to object storage) copy first."""
    if not (isinstance(source, Path) and isinstance(target, Path)):
        if isinstance(source, Path):
            temp = _temp_beside(target)
            temp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, temp)
            _publish(temp, target)
            source.unlink()
        else:
            target_bytes = source.read_bytes()
            _write_bytes(target_bytes, target)
            source.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    source.unlink()


def _write_bytes(data: bytes, target: Location) -> None:
    temp = _temp_beside(target)
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(data)
    _publish(temp, target)


def _file_stem(key: str) -> str:
    """A file-system-safe, collision-free name for a partition key or asset key part.

    Percent-encoding is reversible; keys with ASCII capitals (which collide on
    case-insensitive file systems) or long ones also get a hash suffix after a "+", a
    character the encoding never leaves bare.
    """
    stem = _safe_name(key)
    if len(stem) > _MAX_FILE_STEM or any("A" <= ch <= "Z" for ch in key):
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
        stem = f"{stem[:_MAX_FILE_STEM]}+{digest}"
    return stem


def _safe_name(key: str) -> str:
    """Percent-encoded, with a leading "." encoded too: never hidden, never "." or ".."."""
    name = quote(key, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name or "%00"


def _asset_key(context: dg.InputContext | dg.OutputContext) -> dg.AssetKey:
    if not context.has_asset_key:
        raise dg.DagsterInvariantViolationError(
            "ShardParquetIOManager stores asset outputs only; this input/output has no asset key"
        )
    return context.asset_key
