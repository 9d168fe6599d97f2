"""A batch run's progress while it runs, against a slow demo agent on 127.0.0.1 and a real SQLite
instance: the run tag and each shard's observations move while the run is in progress, and say
it finished at the end; the text of the tag, from the counters alone."""

from __future__ import annotations

import csv
import threading
import time

import dagster as dg
import pytest

from agent_pipelines import tags
from agent_pipelines.batch.progress import ShardProgress, progress_text
from agent_pipelines.batch.triggers import batch_job_name
from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread
from tests.conftest import TEST_TOKEN, write_catalog

TASK = "slow_batch"
ITEMS = 300
DEADLINE_S = 120


def _wait_for(condition, what: str, deadline_s: float = DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_progress_shows_while_the_run_is_in_progress(tmp_path, instance, monkeypatch) -> None:
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN, latency_ms=40)) as agent:
        directory = tmp_path / "catalog"
        directory.mkdir()
        with (directory / "items.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows([f"I{i:04d}", f"item {i}"] for i in range(ITEMS))
        tasks = f"""\
        tasks:
          - name: {TASK}
            owner: support
            agent: slow
            items: {{path: items.csv, id_column: id}}
            shards: 2
            prompt: "Look at {{{{ item.text }}}}"
            checks: {{must_match: ["item [0-9]*0\\\\b"], min_pass_rate: 0.05}}
        """
        slow = f'- {{name: slow, kind: openai_chat, model: demo-model, base_url: "{agent.url}", auth_env: DEMO_AGENT_TOKEN, max_concurrency: 2}}\n'
        defs = build_definitions(load_catalog(write_catalog(directory, agent.url, tasks, slow)))
        outcome: dict[str, dg.ExecuteInProcessResult] = {}

        def backfill() -> None:
            outcome["result"] = defs.resolve_job_def(batch_job_name(TASK)).execute_in_process(
                instance=instance,
                tags={"dagster/asset_partition_range_start": "shard-00", "dagster/asset_partition_range_end": "shard-01"},
                raise_on_error=False,
            )

        thread = threading.Thread(target=backfill, daemon=True)
        thread.start()
        run = _wait_for(lambda: next(iter(instance.get_runs()), None), "the run")

        def progress_mid_run() -> str | None:
            tagged = instance.get_run_by_id(run.run_id)
            text = tagged.tags.get(tags.PROGRESS, "")
            done = int(text.split("/")[0].replace(",", "")) if "/" in text else 0
            return text if 0 < done < ITEMS and not text.startswith("finished") else None

        text = _wait_for(progress_mid_run, "a progress tag while the items go out")
        assert f"/{ITEMS:,} done" in text and "failed" in text and "items/s" in text
        assert thread.is_alive(), "seen while the run was in progress"

        def observations() -> list[dg.AssetObservation]:
            records = instance.fetch_observations(dg.AssetKey(TASK), limit=200).records
            return [r.asset_observation for r in records]

        running = _wait_for(lambda: [o for o in observations() if o.metadata["state"].value == "running"], "a running shard's observation")
        first = running[0]
        assert first.partition in {"shard-00", "shard-01"}
        assert 0 < first.metadata["done"].value <= first.metadata["items"].value
        assert first.metadata["run"].value == run.run_id
        _wait_for(lambda: len({o.metadata["done"].value for o in observations() if o.partition == first.partition}) >= 2, "progress that moves")

        thread.join(DEADLINE_S)
        assert outcome["result"].success
        final = instance.get_run_by_id(run.run_id).tags[tags.PROGRESS]
        assert final.startswith(f"finished: {ITEMS:,}/{ITEMS:,} done, 0 failed"), final
        latest = {}
        for observation in reversed(observations()):
            latest[observation.partition] = observation
        assert {k: (o.metadata["state"].value, o.metadata["done"].value == o.metadata["items"].value) for k, o in latest.items()} == {
            "shard-00": ("finished", True),
            "shard-01": ("finished", True),
        }
        assert sum(o.metadata["done"].value for o in latest.values()) == ITEMS


@pytest.mark.parametrize(
    ("shards", "final", "expected"),
    [
        ([], False, "starting: splitting the items into shards"),
        ([ShardProgress("a", "n", 100, 40, 39, 1, 0, 10.0), ShardProgress("b", "n", 50, 50, 50, 0, 3, 5.5)], False, "90/150 done, 1 failed, 3 failed checks, 16 items/s"),
        ([ShardProgress("a", "n", 12_000, 12_000, 11_969, 31, 0, 0.0)], True, "finished: 12,000/12,000 done, 31 failed"),
        ([ShardProgress("a", "n", None, 7, 7, 0, 0, 1.0)], False, "7 done, 0 failed, 1 items/s"),
    ],
)
def test_progress_text(shards: list[ShardProgress], final: bool, expected: str) -> None:
    assert progress_text(shards, final=final) == expected
