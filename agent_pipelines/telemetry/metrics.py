"""Prometheus metrics read from the store at scrape time.

Executions are sent by many short-lived run processes, so counters kept in one process's memory
would see a fraction of them and reset with every run. Instead each scrape asks the store a few
bounded questions about a recent window (`AGENT_PIPELINES_METRICS_WINDOW`, 15 min by default)
and about what is waiting now; the answer is cached a few seconds so several scrapers cost one
set of queries. Labels are `agent` and `owner` (a few dozen series even with 10,000 tasks);
`AGENT_PIPELINES_METRICS_PER_TASK=true` adds `task`.

Window figures are gauges ("in the last 15 minutes"), not counters: they go down as old
executions leave the window, so use them as they are (no `rate()`). Names and a scrape config:
docs/observability.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent_pipelines.store import StateStore, schema, status

logger = logging.getLogger(__name__)

WINDOW_ENV = "AGENT_PIPELINES_METRICS_WINDOW"
PER_TASK_ENV = "AGENT_PIPELINES_METRICS_PER_TASK"
TOKEN_ENV = "AGENT_PIPELINES_METRICS_TOKEN"
DEFAULT_WINDOW_S = 900.0
CACHE_S = 5.0
#: Lateness and latency quantiles come from at most this many of the window's latest executions.
MAX_SAMPLE_ROWS = 50_000
QUANTILES = (0.5, 0.9, 0.99)
#: Sent executions whose outcome is known: the denominator of the success ratio.
OUTCOMES = (status.SUCCEEDED, status.FAILED, status.UNKNOWN)
#: Waiting to be sent: claimed for an instant, waiting for its next attempt, waiting for a carrier.
WAITING = (status.CLAIMED, status.RETRYING, status.CATCHUP, status.NOT_SENT)
UNKNOWN_OWNER = "unknown"

Labels = tuple[str, ...]


@dataclass(frozen=True)
class CatalogLabels:
    """What the store does not know: each task's owner, and the agents (to use the index)."""

    owners: Mapping[str, str] = field(default_factory=dict)
    agents: Sequence[str] = ()


class CatalogLabelsFromFiles:
    """Labels from the catalog at `path`, reloaded when its files change (checked at most every
    `min_interval_s`); a catalog that fails to load keeps the previous labels."""

    def __init__(self, path: Path | str | None = None, min_interval_s: float = 30.0) -> None:
        from agent_pipelines.catalog.loader import default_catalog_path

        self.path = Path(path) if path is not None else default_catalog_path()
        self.min_interval_s = min_interval_s
        self._labels = CatalogLabels()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> CatalogLabels:
        with self._lock:
            if time.monotonic() - self._checked_at >= self.min_interval_s:
                self._checked_at = time.monotonic()
                self._reload_if_changed()
            return self._labels

    def _reload_if_changed(self) -> None:
        from agent_pipelines import tags
        from agent_pipelines.catalog.loader import catalog_files, load_catalog

        try:
            signature = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in catalog_files(self.path))
            if signature == self._signature:
                return
            catalog = load_catalog(self.path)
        except Exception:  # noqa: BLE001 - metrics go on with the labels they had
            logger.warning("metrics: could not read the catalog at %s", self.path, exc_info=True)
            return
        self._signature = signature
        self._labels = CatalogLabels(
            owners={name: tags.owner_label(task.owner) for name, task in catalog.tasks.items()},
            agents=tuple(sorted(catalog.agents)),
        )


class StoreCollector(Collector):
    """A prometheus_client collector whose every figure comes from the store."""

    def __init__(
        self,
        store: StateStore,
        labels: Callable[[], CatalogLabels] = CatalogLabels,
        *,
        window_s: float | None = None,
        per_task: bool | None = None,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.labels = labels
        self.window_s = window_s if window_s is not None else float(os.environ.get(WINDOW_ENV, DEFAULT_WINDOW_S))
        if per_task is None:
            per_task = os.environ.get(PER_TASK_ENV, "").strip().lower() in ("1", "true", "yes")
        self.per_task = per_task
        self.cache_s = cache_s
        self.clock = clock
        self._cached: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_s:
                self._cached = (now, self._measure())
            return list(self._cached[1])

    # -- the queries ------------------------------------------------------------------------------

    def _measure(self) -> list[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("agent_pipelines_store_up", "1 when the store answered this scrape's queries.")
        try:
            metrics = self._families()
            up.add_metric([], 1)
        except Exception:  # noqa: BLE001 - a scrape reports the outage instead of failing
            logger.exception("metrics: the store did not answer")
            metrics = []
            up.add_metric([], 0)
        window = GaugeMetricFamily("agent_pipelines_metrics_window_seconds", "The window the recent figures cover.")
        window.add_metric([], self.window_s)
        took = GaugeMetricFamily("agent_pipelines_metrics_query_seconds", "How long this scrape's store queries took.")
        took.add_metric([], time.perf_counter() - started)
        return [*metrics, up, window, took]

    def _families(self) -> list[Metric]:
        catalog = self.labels()
        names = ["agent", "owner", *(["task"] if self.per_task else [])]

        def key(task: str, agent: str) -> Labels:
            owner = catalog.owners.get(task, UNKNOWN_OWNER)
            return (agent, owner, task) if self.per_task else (agent, owner)

        e, r = schema.executions, schema.results
        since = _from_epoch(self.clock() - self.window_s)
        recent = e.c.updated_at >= since
        if catalog.agents:  # lets the (agent, updated_at) index answer
            recent = sa.and_(e.c.agent.in_(list(catalog.agents)), recent)
        per_status = (
            sa.select(
                e.c.task,
                e.c.agent,
                e.c.status,
                sa.func.count(),
                sa.func.sum(e.c.cost),
                sa.func.sum(r.c.tokens_in),
                sa.func.sum(r.c.tokens_out),
            )
            .select_from(e.outerjoin(r, r.c.idempotency_key == e.c.idempotency_key))
            .where(recent)
            .group_by(e.c.task, e.c.agent, e.c.status)
        )
        samples = (
            sa.select(e.c.task, e.c.agent, e.c.lateness_ms, e.c.latency_ms)
            .where(recent, e.c.sent_at.is_not(None))
            .order_by(e.c.updated_at.desc())
            .limit(MAX_SAMPLE_ROWS)
        )
        now = _from_epoch(self.clock())
        waiting = (
            sa.select(e.c.task, e.c.agent, e.c.status, sa.func.count())
            .where(
                e.c.status.in_([*WAITING, status.SENDING]),
                sa.or_(e.c.deadline.is_(None), e.c.deadline > now, e.c.status.in_(status.HELD)),
            )
            .group_by(e.c.task, e.c.agent, e.c.status)
        )
        with self.store.engine.connect() as connection:
            status_rows = connection.execute(per_status).all()
            sample_rows = connection.execute(samples).all()
            waiting_rows = connection.execute(waiting).all()

        counts: dict[tuple[Labels, str], float] = defaultdict(float)
        cost: dict[Labels, float] = defaultdict(float)
        tokens: dict[tuple[Labels, str], float] = defaultdict(float)
        for task, agent, state, count, cost_sum, tokens_in, tokens_out in status_rows:
            labels = key(task, agent)
            counts[(labels, state)] += count
            cost[labels] += cost_sum or 0.0
            tokens[(labels, "in")] += tokens_in or 0
            tokens[(labels, "out")] += tokens_out or 0
        executions = GaugeMetricFamily(
            "agent_pipelines_recent_executions",
            "Executions whose state changed in the window, by current status.",
            labels=[*names, "status"],
        )
        for (labels, state), count in sorted(counts.items()):
            executions.add_metric([*labels, state], count)
        ratio = GaugeMetricFamily(
            "agent_pipelines_recent_success_ratio",
            "Succeeded / (succeeded + failed + unknown) among the window's sent executions.",
            labels=names,
        )
        for labels in sorted({labels for labels, _state in counts}):
            decided = sum(counts.get((labels, state), 0.0) for state in OUTCOMES)
            if decided:
                ratio.add_metric(list(labels), counts.get((labels, status.SUCCEEDED), 0.0) / decided)
        tokens_family = GaugeMetricFamily(
            "agent_pipelines_recent_tokens", "Tokens the window's executions used.", labels=[*names, "direction"]
        )
        for (labels, direction), value in sorted(tokens.items()):
            tokens_family.add_metric([*labels, direction], value)
        cost_family = GaugeMetricFamily(
            "agent_pipelines_recent_cost", "Token cost of the window's executions (the catalog's pricing).", labels=names
        )
        for labels, value in sorted(cost.items()):
            cost_family.add_metric(list(labels), value)

        lateness: dict[Labels, list[float]] = defaultdict(list)
        latency: dict[Labels, list[float]] = defaultdict(list)
        for task, agent, lateness_ms, latency_ms in sample_rows:
            labels = key(task, agent)
            if lateness_ms is not None:
                lateness[labels].append(lateness_ms / 1000.0)
            if latency_ms is not None:
                latency[labels].append(latency_ms / 1000.0)

        queue = GaugeMetricFamily(
            "agent_pipelines_queue_depth",
            "Executions waiting to be sent now: claimed (before its instant), retrying (before its "
            "next attempt), catchup / not_sent (waiting for a carrier, before their deadline).",
            labels=[*names, "state"],
        )
        in_flight = GaugeMetricFamily("agent_pipelines_in_flight", "Requests sent and not answered yet (status sending).", labels=names)
        queued: dict[tuple[Labels, str], float] = defaultdict(float)
        sending: dict[Labels, float] = defaultdict(float)
        for task, agent, state, count in waiting_rows:
            if state == status.SENDING:
                sending[key(task, agent)] += count
            else:
                queued[(key(task, agent), state)] += count
        for (labels, state), count in sorted(queued.items()):
            queue.add_metric([*labels, state], count)
        for labels, count in sorted(sending.items()):
            in_flight.add_metric(list(labels), count)
        return [
            executions,
            ratio,
            _summary("agent_pipelines_lateness_seconds", "How long after its due time (or event) each window execution was sent.", names, lateness),
            _summary("agent_pipelines_latency_seconds", "How long the agent took to answer, per window execution.", names, latency),
            tokens_family,
            cost_family,
            queue,
            in_flight,
        ]


def _summary(name: str, documentation: str, names: Sequence[str], values: Mapping[Labels, list[float]]) -> Metric:
    """A Prometheus summary over the window: quantiles, `_sum` and `_count` (which are not
    monotonic: they cover the window)."""
    metric = Metric(name, documentation, "summary")
    for labels, observed in sorted(values.items()):
        observed.sort()
        base = dict(zip(names, labels))
        for q in QUANTILES:
            metric.add_sample(name, {**base, "quantile": str(q)}, _quantile(observed, q))
        metric.add_sample(f"{name}_sum", base, sum(observed))
        metric.add_sample(f"{name}_count", base, len(observed))
    return metric


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))
    return ordered[index]


def _from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


# -- serving --------------------------------------------------------------------------------------


def render(collector: StoreCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def metrics_endpoint(
    store: StateStore,
    labels: Callable[[], CatalogLabels] | None = None,
    *,
    token: str | None = None,
    collector: StoreCollector | None = None,
    **collector_options: Any,
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving the metrics (mount it at `/metrics` on any app). With a
    token (`$AGENT_PIPELINES_METRICS_TOKEN` by default) scrapers must send it as a bearer.
    `collector_options` go to `StoreCollector` (`window_s`, `per_task`, `cache_s`)."""
    collector = collector or StoreCollector(store, labels or CatalogLabelsFromFiles(), **collector_options)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None

    async def metrics(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse("unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        # The queries are synchronous SQLAlchemy: a worker thread keeps the loop serving.
        body = await asyncio.to_thread(render, collector)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics


def metrics_route(store: StateStore, labels: Callable[[], CatalogLabels] | None = None, **options: Any) -> Route:
    """`GET /metrics` for any Starlette app (the ingress, the UI gate)."""
    return Route("/metrics", metrics_endpoint(store, labels, **options), methods=["GET"])


def create_metrics_app(store: StateStore, labels: Callable[[], CatalogLabels] | None = None, **options: Any) -> Starlette:
    """The metrics alone, as an ASGI app (GET /metrics)."""
    return Starlette(routes=[metrics_route(store, labels, **options)])
