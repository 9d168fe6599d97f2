"""The spans of an execution, and the only hooks the dispatcher and the transport call.

One trace per execution: `trigger` (what made it due) → `run` (the Dagster run carrying it) →
`execution` (from its claim to its final outcome, every attempt of this run under it) → one
HTTP client span per request, whose context reaches the agent as a W3C `traceparent` header.

Lateness is the product's main figure, so no span work happens between an instant and the
request leaving: the three outer spans are opened when the execution is claimed and rendered,
on the worker thread, before its instant, and so are the HTTP span's id and the `traceparent`
made of it; at the instant the transport only adds that header and reads the clock. After the
response the HTTP span is created with the send time and that id (`tracing.PresetSpanIds`), and
the outer spans end. With a provider someone else installed, whose ids cannot be chosen, the
HTTP span starts at the send as usual.

A retry in the same run is another HTTP span under the same `execution`; an execution another
run takes over (a catch-up, an orphaned retry) starts a new trace in that run. With tracing off
every hook returns after one attribute check.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agent_pipelines.telemetry import tracing

if TYPE_CHECKING:
    from agent_pipelines.scheduling.dispatcher import Plan
    from agent_pipelines.scheduling.work import Attempt, Finished, WorkItem

#: Attribute names (docs/observability.md lists them).
TASK = "agent_pipelines.task"
AGENT = "agent_pipelines.agent"
OWNER = "agent_pipelines.owner"
KEY = "agent_pipelines.idempotency_key"
TRIGGER_KIND = "agent_pipelines.trigger.kind"
TRIGGER_REF = "agent_pipelines.trigger.ref"
DUE_TIME = "agent_pipelines.due_time"
EVENT_ID = "agent_pipelines.event.id"
CLAIM = "agent_pipelines.claim"
RUN_ID = "dagster.run_id"
WINDOW_END = "agent_pipelines.run.window_end"
EVENTS_WINDOW = "agent_pipelines.run.events_window"
ATTEMPT = "agent_pipelines.attempt"
PROMPT_VERSION = "agent_pipelines.prompt_version"
CANARY = "agent_pipelines.canary"
STATUS = "agent_pipelines.status"
OUTCOME = "agent_pipelines.outcome"
FAILURE_KIND = "agent_pipelines.failure_kind"
LATENESS_MS = "agent_pipelines.lateness_ms"
LATENCY_MS = "agent_pipelines.latency_ms"
TOKENS_IN = "agent_pipelines.tokens_in"
TOKENS_OUT = "agent_pipelines.tokens_out"
REASON = "agent_pipelines.reason"

logger = logging.getLogger(__name__)

#: No request has left for this long: the burst is over, the span work it left can be done.
QUIET_S = 0.05
#: Done anyway after this long (requests leaving without a pause).
MAX_WAIT_S = 5.0
#: Executions whose span work is done between two turns of the loop (~0.1 ms each).
DRAIN_CHUNK = 16

_FAILED = frozenset({"failed", "unknown", "not_sent"})
#: Finished executions whose span context is kept to link the downstream executions to.
_REMEMBERED = 2000


def trigger_kind(item: WorkItem) -> str:
    """schedule | interval | event | upstream | manual."""
    kind = item.trigger.kind
    if kind == "schedule" and getattr(item.task.schedule, "every", None) is not None:
        return "interval"
    return kind


def trace_id(span: trace.Span) -> str | None:
    """The hex trace id a user can search for, when the trace is recorded (sampled)."""
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return trace.format_trace_id(context.trace_id)


@dataclasses.dataclass
class _Request:
    """One HTTP request of an execution. Its span id and propagation headers are chosen before
    the instant; the transport notes when it left and how it ended; its span is created from both
    once the request is over (`ExecutionSpans.finish`), with that id."""

    span_id: int
    headers: Mapping[str, str]
    method: str = ""
    url: str = ""
    start_ns: int = 0
    end_ns: int = 0
    status_code: int | None = None
    error: BaseException | None = None

    def sent(self, method: str, url: str) -> None:
        self.method, self.url, self.start_ns = method, url, time.time_ns()

    def answered(self, status_code: int) -> None:
        self.end_ns, self.status_code = time.time_ns(), status_code

    def failed(self, error: BaseException) -> None:
        self.end_ns, self.error = time.time_ns(), error


@dataclasses.dataclass
class _Open:
    trigger: trace.Span
    run: trace.Span
    execution: trace.Span
    context: otel_context.Context  # the execution span as the current span
    prepared: _Request | None = None  # for the next attempt
    requests: list[_Request] = dataclasses.field(default_factory=list)  # sent, span not created yet

    def next_request(self) -> _Request:
        """The prepared request, or one prepared now (an adapter sending twice in one attempt)."""
        request, self.prepared = self.prepared or _new_request(self.execution.get_span_context()), None
        self.requests.append(request)
        return request


_RANDOM_IDS = RandomIdGenerator()
#: The execution whose attempt the current task is sending (our provider only).
_attempting: contextvars.ContextVar[_Open | None] = contextvars.ContextVar("attempting", default=None)


def _new_request(execution: trace.SpanContext) -> _Request:
    """A span id under `execution` and the headers the configured propagators make of it."""
    span_id = _RANDOM_IDS.generate_span_id()
    context = trace.SpanContext(
        execution.trace_id, span_id, is_remote=False, trace_flags=execution.trace_flags, trace_state=execution.trace_state
    )
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(trace.NonRecordingSpan(context)))
    return _Request(span_id, headers)


class ExecutionSpans:
    """The open spans of the executions one dispatcher carries. Safe from any thread."""

    def __init__(self, run_id: str, run_attributes: Mapping[str, Any] | None = None) -> None:
        self.enabled = tracing.enabled()
        #: With our provider, a request's span is created after it with the id chosen before it;
        #: with another, it is started at the send as usual.
        self._ids = tracing.preset_ids() if self.enabled else None
        self.run_id = run_id
        self._run_attributes = {RUN_ID: run_id, **(run_attributes or {})}
        self._open: dict[str, _Open] = {}
        self._done: OrderedDict[str, trace.SpanContext] = OrderedDict()
        self._lock = threading.Lock()
        self._later: deque[tuple[float, Callable[[], None]]] = deque()  # span work waiting for a quiet loop
        self._draining = False
        self._last_send = float("-inf")

    @classmethod
    def for_plan(cls, run_id: str, plan: Plan) -> ExecutionSpans:
        attributes: dict[str, Any] = {}
        if plan.busy_until is not None:
            attributes[WINDOW_END] = dt.datetime.fromtimestamp(plan.busy_until, dt.timezone.utc).isoformat()
        if plan.events is not None:
            attributes[EVENTS_WINDOW] = f"{plan.events.start.isoformat()}/{plan.events.end.isoformat()}"
        return cls(run_id, attributes)

    def begin(self, item: WorkItem) -> None:
        """Open the execution's spans and prepare its next request's `traceparent` (when it is
        claimed or due again, before its instant)."""
        if not self.enabled:
            return
        opened = self._spans(item)
        if self._ids is not None and opened.prepared is None:
            opened.prepared = _new_request(opened.execution.get_span_context())

    @contextlib.contextmanager
    def attempt(self, attempt: Attempt) -> Iterator[None]:
        """Around one request: the transport adds the prepared headers (`outgoing`) and nothing
        else happens at the instant; the request's span is made in `finish`."""
        if not self.enabled:
            yield
            return
        opened = self._spans(attempt.item)
        if self._ids is None:  # another provider: the HTTP span starts at the send, under this one
            token = otel_context.attach(opened.context)
            try:
                yield
            finally:
                otel_context.detach(token)
            return
        self._last_send = time.monotonic()
        token = _attempting.set(opened)
        try:
            yield
        finally:
            _attempting.reset(token)

    def finish(self, finished: Finished) -> Finished:
        """Record the outcome; end the spans unless another attempt follows in this run.
        Returns `finished` with its trace id, for Dagster's metadata and the store.

        On the dispatcher's loop the span work waits until no request has left for `QUIET_S`
        (`_settle_later`): answers come back while the rest of a burst is still being sent."""
        if not self.enabled:
            return finished
        opened = self._spans(finished.item)
        requests, opened.requests = opened.requests, []
        if finished.status != "retrying":
            with self._lock:
                self._open.pop(finished.item.key, None)
                self._done[finished.item.key] = opened.execution.get_span_context()
                while len(self._done) > _REMEMBERED:
                    self._done.popitem(last=False)
        self._settle_later(functools.partial(self._settle, opened, requests, finished, time.time_ns()))
        return dataclasses.replace(finished, trace_id=trace_id(opened.execution))

    def close(self) -> None:
        """Do the span work still waiting; end whatever is still open (the run stopped with
        executions unsettled); export."""
        while self._later:
            self._later.popleft()[1]()
        with self._lock:
            left, self._open = list(self._open.values()), {}
        for opened in left:
            requests, opened.requests = opened.requests, []
            self._record_requests(opened, requests)
            opened.execution.set_status(Status(StatusCode.ERROR, "the run ended before this execution was settled"))
            for span in (opened.execution, opened.run, opened.trigger):
                span.end()
        if self.enabled:
            tracing.flush()

    # -- after the answer -------------------------------------------------------------------------

    def _settle_later(self, work: Callable[[], None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: nothing is being sent from here
            work()
            return
        self._later.append((time.monotonic(), work))
        if not self._draining:
            self._draining = True
            loop.call_later(QUIET_S, self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """A few executions' span work at a time, once the sending is over (or too long waiting)."""
        now = time.monotonic()
        if self._later and now - self._last_send < QUIET_S and now - self._later[0][0] < MAX_WAIT_S:
            loop.call_later(QUIET_S, self._drain, loop)
            return
        for _ in range(min(DRAIN_CHUNK, len(self._later))):
            work = self._later.popleft()[1]
            try:
                work()
            except Exception:  # noqa: BLE001 - a span lost must not stop the others
                logger.warning("could not record spans", exc_info=True)
        if self._later:
            loop.call_soon(self._drain, loop)
        else:
            self._draining = False
            tracing.export_soon()

    def _settle(self, opened: _Open, requests: list[_Request], finished: Finished, at_ns: int) -> None:
        self._record_requests(opened, requests)
        execution = opened.execution
        attributes: dict[str, Any] = {STATUS: finished.status}
        attempt = finished.attempt
        error = finished.error
        if attempt is not None:
            attributes.update({ATTEMPT: attempt.number, PROMPT_VERSION: attempt.version, CANARY: attempt.canary})
            if attempt.lateness_ms is not None:
                attributes[LATENESS_MS] = attempt.lateness_ms
            if attempt.response is not None:
                attributes[LATENCY_MS] = attempt.response.latency_ms
                if attempt.response.tokens_in is not None:
                    attributes[TOKENS_IN] = attempt.response.tokens_in
                if attempt.response.tokens_out is not None:
                    attributes[TOKENS_OUT] = attempt.response.tokens_out
        if error is not None:
            attributes[FAILURE_KIND] = error.kind.value
        if finished.reason:
            attributes[REASON] = finished.reason[:500]
        if finished.status == "retrying":
            when = finished.next_attempt_at.isoformat() if finished.next_attempt_at else ""
            execution.add_event("retrying", {ATTEMPT: attempt.number if attempt else 0, "next_attempt_at": when}, timestamp=at_ns)
            execution.set_attributes(attributes)
            return
        if finished.status == "succeeded":
            attributes[OUTCOME] = "ok"
        elif finished.status in ("failed", "unknown"):
            attributes[OUTCOME] = "unknown" if finished.status == "unknown" or (error is not None and error.outcome_unknown) else "failed"
        execution.set_attributes(attributes)
        if finished.status in _FAILED:
            description = error.describe() if error is not None else (finished.reason or finished.status)
            execution.set_status(Status(StatusCode.ERROR, description[:500]))
        for span in (opened.execution, opened.run, opened.trigger):
            span.set_attribute(STATUS, finished.status)
            span.end(end_time=at_ns)

    def _record_requests(self, opened: _Open, requests: list[_Request]) -> None:
        """The spans of finished requests, with the ids their headers carried."""
        if self._ids is None:
            return
        tracer = tracing.tracer()
        for request in requests:
            if not request.start_ns:
                continue  # never handed to the HTTP client
            with self._ids.preset_span_id(request.span_id):
                span = tracer.start_span(
                    request.method,
                    context=opened.context,
                    kind=SpanKind.CLIENT,
                    attributes=_http_attributes(request.method, request.url),
                    start_time=request.start_ns,
                )
            if request.status_code is not None:
                http_response(span, request.status_code)
            elif request.error is not None:
                _http_error(span, request.error)
            span.end(end_time=request.end_ns or time.time_ns())

    def _spans(self, item: WorkItem) -> _Open:
        opened = self._open.get(item.key)
        if opened is not None:
            return opened
        with self._lock:
            opened = self._open.get(item.key)
            if opened is None:
                opened = self._open[item.key] = self._start(item)
            return opened

    def _start(self, item: WorkItem) -> _Open:
        tracer = tracing.tracer()
        task = item.task
        common = {TASK: task.name, KEY: item.key}
        trigger_attributes: dict[str, Any] = {**common, TRIGGER_KIND: trigger_kind(item), TRIGGER_REF: item.trigger.ref, CLAIM: item.claim}
        if item.due_time is not None:
            trigger_attributes[DUE_TIME] = item.due_time.isoformat()
        if item.event is not None:
            trigger_attributes[EVENT_ID] = item.event.event_id
        trigger_span = tracer.start_span(
            "trigger", context=otel_context.Context(), attributes=trigger_attributes, links=self._links(item)
        )
        run_span = tracer.start_span("run", context=trace.set_span_in_context(trigger_span), attributes={**common, **self._run_attributes})
        execution = tracer.start_span(
            "execution",
            context=trace.set_span_in_context(run_span),
            attributes={**common, AGENT: task.agent or "", OWNER: task.owner},
        )
        return _Open(trigger_span, run_span, execution, trace.set_span_in_context(execution))

    def _links(self, item: WorkItem) -> list[Link]:
        """An upstream execution this one follows; the ingress request that stored its event."""
        links = []
        for upstream_key in item.upstream.values():
            upstream = self._done.get(upstream_key)
            if upstream is not None:
                links.append(Link(upstream, {KEY: upstream_key}))
        traceparent = getattr(item.event, "traceparent", None) if item.event is not None else None
        if traceparent:
            remote = trace.get_current_span(propagate.extract({"traceparent": traceparent})).get_span_context()
            if remote.is_valid:
                links.append(Link(remote, {EVENT_ID: item.event.event_id}))  # type: ignore[union-attr]
        return links


# -- the HTTP client span (agents/transport.py) ------------------------------------------------


def outgoing() -> _Request | None:
    """The request the current attempt is about to send, with its prepared headers, when our
    provider traces it; the transport notes on it when it left and how it ended."""
    opened = _attempting.get()
    return opened.next_request() if opened is not None else None


def recording() -> bool:
    """Whether a span is being recorded here (a provider other than ours traces the caller)."""
    return trace.get_current_span().is_recording()


@contextlib.contextmanager
def http_request(method: str, url: str, headers: Mapping[str, str]) -> Iterator[tuple[Mapping[str, str], trace.Span | None]]:
    """A client span started now under the current execution, and the headers with its
    `traceparent`: the way with a provider other than ours. Outside an execution (probes,
    batches) nothing is recorded or added."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        yield headers, None
        return
    span = tracing.tracer().start_span(method, kind=SpanKind.CLIENT, attributes=_http_attributes(method, url))
    carrier = dict(headers)
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    try:
        yield carrier, span
    except BaseException as exc:
        _http_error(span, exc)
        raise
    finally:
        span.end()


def _http_attributes(method: str, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        # No user-info or query: either may carry a secret.
        "url.full": urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")) if parts.port is None
        else urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", "")),
        "server.address": parts.hostname or "",
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    return attributes


def _http_error(span: trace.Span, exc: BaseException) -> None:
    kind = getattr(exc, "kind", None)
    span.set_attribute("error.type", getattr(kind, "value", None) or type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:300]))


def http_response(span: trace.Span | None, status_code: int) -> None:
    if span is None:
        return
    span.set_attribute("http.response.status_code", status_code)
    if status_code >= 400:
        span.set_attribute("error.type", str(status_code))
        span.set_status(Status(StatusCode.ERROR))
