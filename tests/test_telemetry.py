"""Tracing and metrics against real servers on 127.0.0.1: each execution is one trace
(trigger → run → execution → HTTP request) whose context reaches the agent as `traceparent`,
retries are further requests under the same execution, and `/metrics` on the ingress answers
Prometheus text computed from the store's records."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread
from agent_pipelines.http_server import serve_in_thread
from agent_pipelines.ingress import CatalogSources, create_ingress_app
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.dispatcher import Dispatcher, Plan
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.scheduling.work import WorkItem
from agent_pipelines.store import Claim, ResultRecord, Settlement, StateStore, status
from agent_pipelines.telemetry import spans as span_names
from agent_pipelines.telemetry import tracing
from agent_pipelines.telemetry.metrics import CatalogLabels, create_metrics_app
from tests.conftest import TEST_TOKEN, write_catalog

UTC = dt.timezone.utc

FLAKY_AGENT = """\
- name: flaky
  kind: openai_chat
  base_url: {url}
  auth_env: DEMO_AGENT_TOKEN
  model: demo-model
  timeout: 5s
  pricing: {{input_per_1k: 1.0, output_per_1k: 2.0}}
"""
TASKS = """\
tasks:
  - {name: tick, owner: "team:ops", agent: demo, prompt: "tick at {{ due_time.isoformat() }}", schedule: {every: 1s}}
  - name: shaky
    owner: research
    agent: flaky
    prompt: "shaky at {{ due_time.isoformat() }}"
    schedule: {cron: "0 * * * *"}
    retries: {count: 2, delay: 1s, backoff: constant, jitter: none}
"""


@pytest.fixture(params=["ours", "foreign"])
def exported(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter]:
    """Every span this process records, in memory: with our id generator (HTTP spans created
    after the response with the id sent before it), or a provider someone else set up (HTTP
    spans started at the send)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=tracing.PRESET_IDS) if request.param == "ours" else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(previous)
        provider.shutdown()


@pytest.fixture
def flaky_agent(demo_agent):
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN)) as agent:
        yield agent


@pytest.fixture
def catalog(tmp_path: Path, demo_agent, flaky_agent):
    loaded = load_catalog(write_catalog(tmp_path / "catalog", demo_agent.url, TASKS, FLAKY_AGENT.format(url=flaky_agent.url)))
    assert loaded.ok, loaded.problems
    return loaded


@pytest.fixture
def store(instance) -> StateStore:
    return StateStore.for_instance(instance)


def _due_soon() -> dt.datetime:
    return dt.datetime.fromtimestamp(int(time.time() + 1.5), UTC)


def _run(catalog, store, items: list[WorkItem], run_id: str = "run-traced") -> list:
    published: list = []
    dispatcher = Dispatcher(catalog=catalog, store=store, run_id=run_id, publish=published.append)
    event_loop.run(dispatcher.run(Plan(items=items, busy_until=None)))
    return published


def _by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


def _parent(span: ReadableSpan, index: dict[int, ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    return index[span.parent.span_id]


def _traceparent(header: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00" and int(flags, 16) & 1, "sampled"
    return trace_id, span_id


def test_each_execution_is_one_trace_that_reaches_the_agent(catalog, store, demo_agent, flaky_agent, exported) -> None:
    flaky_agent.push_faults([{"status": 500}])  # the first attempt of `shaky` fails, the retry answers
    due = _due_soon()
    items = [WorkItem(catalog.tasks[name], Trigger.scheduled(due), due.timestamp()) for name in ("tick", "shaky")]
    published = _run(catalog, store, items)

    spans = exported.get_finished_spans()
    index = _by_id(spans)

    # `tick`: the agent received the HTTP span's context; the chain is trigger → run → execution → POST.
    (request,) = demo_agent.requests()
    trace_id, span_id = _traceparent(request.headers["traceparent"])
    http = index[int(span_id, 16)]
    assert trace.format_trace_id(http.context.trace_id) == trace_id
    assert http.name == "POST" and http.kind is trace.SpanKind.CLIENT
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["url.full"].startswith(demo_agent.url)
    execution = _parent(http, index)
    run = _parent(execution, index)
    trigger_span = _parent(run, index)
    assert [execution.name, run.name, trigger_span.name] == ["execution", "run", "trigger"]
    # Created after the response or started at the send, the request span covers the request.
    sent_at = store.get_execution(items[0].key).sent_at.timestamp()
    assert execution.start_time < http.start_time < http.end_time < execution.end_time
    assert abs(http.start_time / 1e9 - sent_at) < 0.5
    assert trigger_span.parent is None
    assert {trace.format_trace_id(s.context.trace_id) for s in (execution, run, trigger_span)} == {trace_id}
    key = items[0].key
    assert trigger_span.attributes[span_names.TRIGGER_KIND] == "interval"
    assert trigger_span.attributes[span_names.DUE_TIME] == due.isoformat()
    assert run.attributes[span_names.RUN_ID] == "run-traced"
    assert execution.attributes[span_names.KEY] == key
    assert execution.attributes[span_names.AGENT] == "demo"
    assert execution.attributes[span_names.STATUS] == status.SUCCEEDED
    assert execution.attributes[span_names.OUTCOME] == "ok"
    assert execution.attributes[span_names.ATTEMPT] == 1
    assert execution.attributes[span_names.PROMPT_VERSION] == catalog.prompt_versions["tick"]
    assert execution.attributes[span_names.LATENESS_MS] == pytest.approx(store.get_execution(key).lateness_ms)

    # The trace id is on the execution's materialization in Dagster.
    (materialization,) = [e for p in published if p.task == "tick" for e in p.events if isinstance(e, dg.AssetMaterialization)]
    assert materialization.metadata["trace_id"].value == trace_id

    # `shaky`: two requests, one trace, both HTTP spans under the same execution span.
    first, second = flaky_agent.requests()
    (shaky_trace, first_span), (second_trace, second_span) = (_traceparent(r.headers["traceparent"]) for r in (first, second))
    assert shaky_trace == second_trace != trace_id and first_span != second_span
    failed, answered = index[int(first_span, 16)], index[int(second_span, 16)]
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert answered.attributes["http.response.status_code"] == 200
    assert failed.parent.span_id == answered.parent.span_id
    shaky_execution = index[failed.parent.span_id]
    assert shaky_execution.attributes[span_names.ATTEMPT] == 2
    assert shaky_execution.attributes[span_names.STATUS] == status.SUCCEEDED
    assert shaky_execution.attributes[span_names.TASK] == "shaky"
    assert [event.name for event in shaky_execution.events] == ["retrying"]
    assert _parent(_parent(shaky_execution, index), index).attributes[span_names.TRIGGER_KIND] == "schedule"
    # Nothing but these two traces: 4 + 5 spans.
    assert len(spans) == 9


def test_with_tracing_off_nothing_is_recorded_or_sent(catalog, store, demo_agent) -> None:
    previous = tracing.use_provider(trace.NoOpTracerProvider())
    try:
        due = _due_soon()
        published = _run(catalog, store, [WorkItem(catalog.tasks["tick"], Trigger.scheduled(due), due.timestamp())])
    finally:
        tracing.use_provider(previous)
    (request,) = demo_agent.requests()
    assert "traceparent" not in request.headers
    (materialization,) = [e for p in published for e in p.events if isinstance(e, dg.AssetMaterialization)]
    assert "trace_id" not in materialization.metadata
    assert store.get_execution(WorkItem(catalog.tasks["tick"], Trigger.scheduled(due), 0).key).status == status.SUCCEEDED


def test_exporters_come_from_the_environment(tmp_path: Path) -> None:
    assert tracing.exporter_names({}) == ["file"]
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporter_names({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    with pytest.raises(ValueError, match="jaeger"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert isinstance(tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "none"}), trace.NoOpTracerProvider)
    # No DAGSTER_HOME and no traces directory: nowhere to write, so no spans at all.
    assert isinstance(tracing.provider_from_env({}), trace.NoOpTracerProvider)

    (otlp,) = tracing.build_exporters(
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}
    )
    assert type(otlp).__name__ == "OTLPSpanExporter"
    otlp.shutdown()

    # The default: JSON lines under $DAGSTER_HOME/traces, with the service name.
    provider = tracing.provider_from_env({"DAGSTER_HOME": str(tmp_path), "OTEL_SERVICE_NAME": "ap-test"})
    with provider.get_tracer("t").start_as_current_span("trigger") as span:
        span.set_attribute(span_names.TASK, "tick")
    provider.force_flush()
    (written,) = (tmp_path / "traces").glob("spans-*.jsonl")
    (line,) = written.read_text().splitlines()
    record = json.loads(line)
    assert record["name"] == "trigger" and record["attributes"][span_names.TASK] == "tick"
    assert record["resource"]["attributes"]["service.name"] == "ap-test"
    provider.shutdown()


def _record(store: StateStore, key: str, task: str, agent: str, state: str, **figures) -> None:
    now = dt.datetime.now(UTC)
    store.claim([Claim(key, task, agent, "run-m", "schedule", now, "v1")])
    if state == status.CLAIMED:
        return
    store.start_attempts([key], "run-m", now)
    if state == status.SENDING:
        return
    tokens = figures.pop("tokens", None)
    result = ResultRecord(prompt="p", output="o", tokens_in=tokens[0], tokens_out=tokens[1]) if tokens else None
    store.settle([Settlement(key, task, state, "run-m", sent_at=now, result=result, **figures)])


def _scrape(url: str, **headers: str) -> dict[str, list]:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [value for have, value in samples.get(name, []) if have == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_endpoint_reports_the_recorded_executions(tmp_path: Path, store, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_dir = write_catalog(tmp_path / "catalog", "http://127.0.0.1:9", TASKS, FLAKY_AGENT.format(url="http://127.0.0.1:9"))
    monkeypatch.setenv("AGENT_PIPELINES_CATALOG", str(catalog_dir))
    monkeypatch.delenv("AGENT_PIPELINES_METRICS_TOKEN", raising=False)
    for n, lateness in enumerate([10.0, 20.0, 30.0, 400.0]):
        _record(store, f"t{n}", "tick", "demo", status.SUCCEEDED, outcome="ok", lateness_ms=lateness, latency_ms=100.0, tokens=(5, 7))
    _record(store, "t-failed", "tick", "demo", status.FAILED, outcome="failed", failure_kind="server_error", lateness_ms=50.0)
    _record(store, "s0", "shaky", "flaky", status.SUCCEEDED, outcome="ok", lateness_ms=5.0, cost=0.25, tokens=(100, 50))
    _record(store, "s-retry", "shaky", "flaky", status.RETRYING, lateness_ms=5.0, next_attempt_at=dt.datetime.now(UTC))
    _record(store, "s-claimed", "shaky", "flaky", status.CLAIMED)
    _record(store, "t-sending", "tick", "demo", status.SENDING)

    app = create_ingress_app(CatalogSources(catalog_dir, min_interval_s=0), store)
    with serve_in_thread(app, name="ingress") as server:
        samples = _scrape(server.url)

    ops, research = {"agent": "demo", "owner": "ops"}, {"agent": "flaky", "owner": "research"}
    assert _value(samples, "agent_pipelines_store_up") == 1
    assert _value(samples, "agent_pipelines_recent_executions", **ops, status="succeeded") == 4
    assert _value(samples, "agent_pipelines_recent_executions", **ops, status="failed") == 1
    assert _value(samples, "agent_pipelines_recent_success_ratio", **ops) == pytest.approx(0.8)
    assert _value(samples, "agent_pipelines_recent_success_ratio", **research) == 1.0
    assert _value(samples, "agent_pipelines_lateness_seconds_count", **ops) == 5
    assert _value(samples, "agent_pipelines_lateness_seconds_sum", **ops) == pytest.approx(0.51)
    assert _value(samples, "agent_pipelines_lateness_seconds", **ops, quantile="0.5") == pytest.approx(0.03)
    assert _value(samples, "agent_pipelines_lateness_seconds", **ops, quantile="0.99") == pytest.approx(0.4)
    assert _value(samples, "agent_pipelines_latency_seconds_count", **ops) == 4
    assert _value(samples, "agent_pipelines_recent_tokens", **ops, direction="in") == 20
    assert _value(samples, "agent_pipelines_recent_tokens", **ops, direction="out") == 28
    assert _value(samples, "agent_pipelines_recent_tokens", **research, direction="in") == 100
    assert _value(samples, "agent_pipelines_recent_cost", **research) == pytest.approx(0.25)
    assert _value(samples, "agent_pipelines_queue_depth", **research, state="claimed") == 1
    assert _value(samples, "agent_pipelines_queue_depth", **research, state="retrying") == 1
    assert _value(samples, "agent_pipelines_in_flight", **ops) == 1
    assert _value(samples, "agent_pipelines_metrics_window_seconds") == 900


def test_standalone_metrics_app_per_task_and_with_a_token(store) -> None:
    _record(store, "t0", "tick", "demo", status.SUCCEEDED, outcome="ok", lateness_ms=10.0)
    app = create_metrics_app(store, CatalogLabels, token="scrape-secret", per_task=True)
    with serve_in_thread(app, name="metrics") as server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        samples = _scrape(server.url, Authorization="Bearer scrape-secret")
    # Without a catalog the owner is unknown; per task, the task is a label.
    labels = {"agent": "demo", "owner": "unknown", "task": "tick"}
    assert _value(samples, "agent_pipelines_recent_executions", **labels, status="succeeded") == 1
