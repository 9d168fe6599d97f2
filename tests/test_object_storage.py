"""Batch results in object storage: with $AGENT_PIPELINES_RESULTS_URL=s3://... every shard file
and the combined file are put to a real S3-compatible server on 127.0.0.1 (moto's standalone
server), nothing lands on the local disk, and readers stream them back from there. On
Kubernetes a pod's disk is gone with the pod, so a K8s run launcher with local results storage is
refused before any agent is called."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pandas as pd
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.local_platform import free_port
from resources.shard_io_manager import RESULTS_URL_ENV, ShardWriter, iter_result_batches, read_results
from tests.test_batch import ITEMS, _backfill, _catalog, _shard_materializations, fleet  # noqa: F401 - fixture

BUCKET = "agent-results"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.client]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps file systems per process: not the last test's server
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def _keys(client: boto3.client, prefix: str = "") -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def _row(i: int) -> dict:
    return {"item_id": f"i{i}", "item": {"n": i}, "shard": "s0", "node": "n0", "status": "ok", "output": f"out {i}", "attempts": 1}


def test_a_shard_is_put_whole_or_not_at_all(s3) -> None:
    url = f"s3://{BUCKET}/unit/shard-0.parquet"
    with ShardWriter(url, flush_rows=10) as writer:
        writer.write_rows(_row(i) for i in range(25))
    assert _keys(s3, "unit/") == ["unit/shard-0.parquet"]
    assert read_results(url)["item_id"].tolist() == [f"i{i}" for i in range(25)]
    assert sum(batch.num_rows for batch in iter_result_batches([url], batch_rows=7)) == 25

    with pytest.raises(RuntimeError, match="agent down"), ShardWriter(url, flush_rows=10) as writer:
        writer.write_rows(_row(i) for i in range(100, 130))
        raise RuntimeError("agent down")
    assert read_results(url)["item_id"].tolist() == [f"i{i}" for i in range(25)], "a failed shard keeps the previous results"


def test_a_batch_backfill_and_its_combined_results_live_in_s3(tmp_path: Path, fleet, instance, s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv(RESULTS_URL_ENV, f"s3://{BUCKET}/prod")
    defs = build_definitions(load_catalog(_catalog(tmp_path, fleet)))
    result = _backfill(defs, instance, ["node0", "node1", "node2", "node3"])
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]

    shards = _shard_materializations(instance)
    paths = {key: m.metadata["path"].value for key, m in shards.items()}
    assert all(path.startswith(f"s3://{BUCKET}/prod/score_tickets/") for path in paths.values()), paths
    assert sorted(_keys(s3, "prod/score_tickets/")) == sorted(p.removeprefix(f"s3://{BUCKET}/") for p in paths.values())
    results = pd.concat(read_results(path) for path in paths.values())
    assert len(results) == ITEMS and results["item_id"].is_unique

    combined = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("score_tickets_all")]
    )
    assert combined.success
    (record,) = instance.fetch_materializations(dg.AssetKey("score_tickets_all"), limit=1).records
    everything = record.asset_materialization.metadata["path"].value
    assert everything.startswith(f"s3://{BUCKET}/prod/")
    assert len(read_results(everything)) == ITEMS
    local = Path(instance.root_directory) / "storage" / "agent_pipelines"
    assert not local.exists() or not any(local.rglob("*.parquet")), "nothing on the local disk"
    leftovers = list((Path(tempfile.gettempdir()) / "agent-pipelines-results").glob("*.tmp"))
    assert not leftovers, leftovers
