"""Batch tasks started by schedules, events and upstream outputs: one claim and one run (over all
shards) per due time, misfire policies, items keyed by their execution, and a re-run of a due
time that resumes only the items that failed. Real demo agents, a real Dagster instance and
state store; the trigger sensor's logic is driven with its own clock."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from agent_pipelines import tags
from agent_pipelines.batch.triggers import BatchCursor, BatchTriggers
from agent_pipelines.catalog.loader import Catalog, load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.demo_agent import RunningDemoAgent
from agent_pipelines.store import StateStore, status
from resources.store import StoreResource

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)
ITEMS = 60


def _catalog(tmp_path: Path, agent: RunningDemoAgent, task_extra: str) -> Catalog:
    directory = tmp_path / "catalog"
    directory.mkdir(exist_ok=True)
    (directory / "hosts.jsonl").write_text("".join(f'{{"host": "h{i:03d}", "zone": "z{i % 3}"}}\n' for i in range(ITEMS)))
    (directory / "batch.yaml").write_text(
        textwrap.dedent(
            """\
            agents:
              - name: auditor
                kind: openai_chat
                base_url: "{url}"
                model: demo-model
                auth_env: DEMO_AGENT_TOKEN
                max_concurrency: 8
                timeout: 5s
            sources:
              - name: releases
                auth: {{kind: bearer, token_env: DEMO_INGRESS_TOKEN}}
                type_field: type
            tasks:
              - name: build_notes
                owner: ops
                agent: auditor
                prompt: "Write the build notes"
              - name: audit_hosts
                owner: ops
                agent: auditor
                items: {{path: hosts.jsonl, id_column: host}}
                shards: 3
                prompt: "Audit {{{{ item.host }}}} for {{{{ due_time.isoformat() }}}}"
                max_failure_ratio: 0.0
            {task_extra}
            """
        ).format(url=agent.url, task_extra=textwrap.indent(task_extra, "    ").strip("\n"))
    )
    catalog = load_catalog(directory)
    assert not catalog.problems, catalog.problems
    return catalog


def _store(instance: dg.DagsterInstance) -> StateStore:
    return StoreResource().for_instance(instance)


def _tick(catalog: Catalog, instance: dg.DagsterInstance, now: dt.datetime, cursor: BatchCursor | None = None) -> tuple[list[dg.RunRequest], BatchCursor, BatchTriggers]:
    triggers = BatchTriggers(catalog, _store(instance))
    requests, cursor = triggers.tick(cursor or BatchCursor(), now, instance)
    return requests, BatchCursor.parse(cursor.dump()), triggers


def _launch(catalog: Catalog, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Run a sensor's request the way the daemon would: its job, its tags (partition range)."""
    job = build_definitions(catalog).resolve_job_def(request.job_name)
    return job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)


def _item_keys(agent: RunningDemoAgent) -> list[str]:
    return [r.headers.get("idempotency-key", "") for r in agent.state.requests() if r.path.endswith("/chat/completions")]


def test_a_scheduled_batch_runs_once_per_due_time_over_all_shards(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(tmp_path, demo_agent, "schedule: {every: 1m}\n")
    requests, cursor, _ = _tick(catalog, instance, T0 - dt.timedelta(seconds=30))  # the task is new: registered
    assert requests == []
    now = T0 + dt.timedelta(seconds=2)
    requests, cursor, triggers = _tick(catalog, instance, now, cursor)
    key = "agent-pipelines:audit_hosts:schedule:2026-12-03T09:00:00.000Z"
    assert [r.run_key for r in requests] == [key] and triggers.report.claimed == [key]
    request = requests[0]
    assert request.job_name == "audit_hosts_batch_job"
    assert request.tags[tags.EXECUTION] == key and request.tags[tags.TRIGGER] == "schedule"
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == ("shard-00", "shard-02")

    # A repeated tick (a sensor retried after a crash) asks for the same run again: the run key
    # dedupes it in Dagster, and no second claim exists.
    again, cursor, triggers = _tick(catalog, instance, now, cursor)
    assert [r.run_key for r in again] == [key] and triggers.report.claimed == []

    result = _launch(catalog, instance, request)
    assert result.success
    execution = _store(instance).get_execution(key)
    assert execution is not None and execution.status == status.SUCCEEDED and execution.trigger == "schedule"
    assert execution.run_id == result.run_id
    keys = _item_keys(demo_agent)
    assert len(keys) == ITEMS and len(set(keys)) == ITEMS
    assert all(k.endswith(":schedule:2026-12-03T09:00:00.000Z") for k in keys), keys[:3]
    prompts = [r.body["messages"][-1]["content"] for r in demo_agent.state.requests()]
    assert all("2026-12-03T09:00:00+00:00" in p for p in prompts), prompts[:2]

    # Once carried, the due time is never requested again; the next one is.
    later, cursor, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=61), cursor)
    assert [r.run_key for r in later] == ["agent-pipelines:audit_hosts:schedule:2026-12-03T09:01:00.000Z"]


def test_a_rerun_of_a_due_time_sends_only_the_items_that_failed(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(tmp_path, demo_agent, "schedule: {every: 1m}\nretries: {count: 0}\n")
    _r, cursor, _ = _tick(catalog, instance, T0 - dt.timedelta(seconds=30))
    (request,), cursor, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=1), cursor)
    demo_agent.push_faults([{"status": 500}] * 7)  # no retries: 7 items fail
    first = _launch(catalog, instance, request)
    assert not first.success
    store = _store(instance)
    execution = store.get_execution(request.run_key)
    assert execution is not None and execution.status == status.FAILED and "items failed" in (execution.error or "")
    sent_first = _item_keys(demo_agent)
    assert len(sent_first) == ITEMS

    demo_agent.state.reset()
    second = _launch(catalog, instance, request)  # the same due time again: same tags, same key
    assert second.success
    resent = _item_keys(demo_agent)
    assert len(resent) == 7, "only the failed items are sent again"
    assert set(resent) <= set(sent_first), "with the same idempotency keys as before"
    execution = store.get_execution(request.run_key)
    assert execution is not None and execution.status == status.SUCCEEDED and execution.attempts == 2
    shards = {}
    for record in instance.fetch_materializations(dg.AssetKey("audit_hosts"), limit=10).records:
        shards.setdefault(record.asset_materialization.partition, record.asset_materialization)
    frames = pd.concat(pd.read_parquet(m.metadata["path"].value) for m in shards.values())
    assert len(frames) == ITEMS and frames["item_id"].is_unique and set(frames["status"]) == {"ok"}
    assert set(frames["execution"]) == {request.run_key}


@pytest.mark.parametrize(
    ("policy", "caught_up"),
    [("skip", []), ("latest", ["09:09"]), ("all", ["09:07", "09:08", "09:09"])],
)
def test_due_times_missed_while_the_daemon_was_down_follow_the_misfire_policy(tmp_path, demo_agent, instance, policy, caught_up) -> None:
    catalog = _catalog(tmp_path, demo_agent, f"schedule: {{every: 1m}}\nmisfire: {{policy: {policy}, grace: 30s, max_catchup: 3}}\n")
    _r, cursor, _ = _tick(catalog, instance, T0 - dt.timedelta(seconds=30))
    # The daemon was down from 09:00 to 09:09:50: ten due times passed their grace.
    requests, cursor, triggers = _tick(catalog, instance, T0 + dt.timedelta(minutes=9, seconds=50), cursor)
    store = _store(instance)
    claimed = sorted(k.rsplit("T", 1)[1][:5] for k in triggers.report.claimed)
    assert claimed == caught_up
    assert sorted(r.run_key for r in requests) == sorted(triggers.report.claimed)
    assert len(triggers.report.missed) == 10 - len(caught_up)
    missed = store.get_execution(triggers.report.missed[0])
    assert missed is not None and missed.status == status.MISSED
    assert "daemon was down" in (missed.reason or "") and f"misfire policy `{policy}`" in (missed.reason or "")


def test_an_event_starts_one_batch_run_with_the_event_in_the_prompt(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(
        tmp_path,
        demo_agent,
        'events: [{source: releases, type: published}]\n',
    )
    # the prompt may read the event: re-declare the task's prompt through a variable-free edit
    yaml_path = tmp_path / "catalog" / "batch.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("for {{ due_time.isoformat() }}", "after release {{ event.payload.version }}"))
    catalog = load_catalog(tmp_path / "catalog")
    assert not catalog.problems, catalog.problems
    _r, cursor, _ = _tick(catalog, instance, T0)
    store = _store(instance)
    store.insert_event(event_id="rel-42", source="releases", type="published", payload={"version": "4.2"})
    store.insert_event(event_id="rel-43", source="releases", type="drafted", payload={"version": "4.3"})
    requests, cursor, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=5), cursor)
    assert [r.run_key for r in requests] == ["agent-pipelines:audit_hosts:event:rel-42"]
    assert requests[0].tags[tags.EVENT_ID] == "rel-42"
    assert _launch(catalog, instance, requests[0]).success
    prompts = [r.body["messages"][-1]["content"] for r in demo_agent.state.requests()]
    assert len(prompts) == ITEMS and all(p.endswith("after release 4.2") for p in prompts)
    again, _, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=10), cursor)
    assert again == []


def test_a_new_upstream_output_starts_the_batch_once(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(tmp_path, demo_agent, "depends_on: [build_notes]\non_upstream: true\n")
    instance.report_runless_asset_event(dg.AssetMaterialization("build_notes"))
    requests, cursor, _ = _tick(catalog, instance, T0)
    assert requests == [], "an output from before the sensor first looked starts nothing"
    instance.report_runless_asset_event(dg.AssetMaterialization("build_notes"))
    requests, cursor, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=5), cursor)
    assert len(requests) == 1 and requests[0].run_key.startswith("agent-pipelines:audit_hosts:upstream:build_notes@")
    again, _, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=10), cursor)
    assert [r.run_key for r in again] == [requests[0].run_key], "asked again until a run takes it"


def test_a_claim_no_run_took_by_its_deadline_is_recorded_missed(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(tmp_path, demo_agent, "schedule: {every: 1m}\nmisfire: {grace: 10s}\n")
    _r, cursor, _ = _tick(catalog, instance, T0 - dt.timedelta(seconds=30))
    (request,), cursor, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=1), cursor)
    requests, cursor, triggers = _tick(catalog, instance, T0 + dt.timedelta(seconds=20), cursor)
    assert requests == []
    assert triggers.report.expired == [(request.run_key, "no run started it before its deadline")]
    execution = _store(instance).get_execution(request.run_key)
    assert execution is not None and execution.status == status.MISSED


def test_paused_batch_tasks_are_not_started(tmp_path, demo_agent, instance) -> None:
    catalog = _catalog(tmp_path, demo_agent, "schedule: {every: 1m}\n")
    _r, cursor, _ = _tick(catalog, instance, T0 - dt.timedelta(seconds=30))
    _store(instance).set_paused("audit_hosts", True)
    requests, _, _ = _tick(catalog, instance, T0 + dt.timedelta(seconds=1), cursor)
    assert requests == []
