"""The process's tracer, set up once from the environment.

Run workers, the ingress and the daemon are separate processes, so each one sets its provider up
lazily the first time a span is asked for, from the standard variables where they exist:

- `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: no spans at all (a no-op tracer,
  nothing recorded, nothing injected).
- `OTEL_TRACES_EXPORTER` (comma-separated): `file` (ours, the default), `otlp` (OTLP over
  HTTP/protobuf; `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
  `OTEL_EXPORTER_OTLP_HEADERS` are read by the exporter), `console` (stdout).
- `OTEL_SERVICE_NAME` (default `agent-pipelines`), `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`: read by the SDK itself.
- `AGENT_PIPELINES_TRACES_DIR` (default `$DAGSTER_HOME/traces`) and
  `AGENT_PIPELINES_TRACES_KEEP_DAYS` (default 7) for the file exporter.

The default therefore writes to a local file and sends nothing anywhere: OTLP is used only when
asked for. A provider someone else installed globally (`opentelemetry-instrument`) is used as
it is. Every exporter sits behind a batch processor, so ending a span on the dispatcher's loop
only queues it; unless `OTEL_BSP_*` say otherwise, its batches are large enough that a burst's
spans are written in one go after it (see `spans.py`) rather than a batch at a time during it.

Our provider takes its span ids from `PresetSpanIds`, which lets the HTTP span of a request be
created after the response with the id its `traceparent` already carried (`spans.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

logger = logging.getLogger(__name__)

INSTRUMENTATION = "agent_pipelines"
DEFAULT_SERVICE_NAME = "agent-pipelines"
TRACES_DIR_ENV = "AGENT_PIPELINES_TRACES_DIR"
KEEP_DAYS_ENV = "AGENT_PIPELINES_TRACES_KEEP_DAYS"
DEFAULT_KEEP_DAYS = 7
EXPORTERS = ("file", "otlp", "console", "none")
#: Batch processor settings when `OTEL_BSP_*` leave them out: the SDK's (512 spans a batch,
#: every 5 s) wake the exporter in the middle of a 200-execution burst (4 spans each).
BATCH_SETTINGS = {
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 16384),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 4096),
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 5000),
}

_lock = threading.Lock()
_provider: trace.TracerProvider | None = None
_tracer: trace.Tracer | None = None
_exporting: threading.Thread | None = None


class PresetSpanIds(RandomIdGenerator):
    """Random ids, except the span id given to `preset_span_id` for the span started in it."""

    def __init__(self) -> None:
        self._preset: contextvars.ContextVar[int | None] = contextvars.ContextVar("preset_span_id", default=None)

    def generate_span_id(self) -> int:
        preset = self._preset.get()
        return preset if preset is not None else super().generate_span_id()

    @contextlib.contextmanager
    def preset_span_id(self, span_id: int) -> Iterator[None]:
        token = self._preset.set(span_id)
        try:
            yield
        finally:
            self._preset.reset(token)


#: Shared by every provider this module builds (it holds no state outside the context).
PRESET_IDS = PresetSpanIds()


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per span, appended to `spans-YYYY-MM-DD.jsonl` (UTC day) in `directory`.

    Each batch is one `write` on a file opened for appending, so the run processes of one
    machine can share the files; files older than `keep_days` are removed when the exporter
    starts."""

    def __init__(self, directory: Path, keep_days: int = DEFAULT_KEEP_DAYS) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prune(keep_days)

    def path_for(self, day: dt.date) -> Path:
        return self.directory / f"spans-{day.isoformat()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(span.to_json(indent=None) + "\n" for span in spans)
        path = self.path_for(dt.datetime.now(dt.timezone.utc).date())
        try:
            try:
                with open(path, "a", encoding="utf-8") as out:
                    out.write(text)
            except FileNotFoundError:  # the directory was cleaned away under a long-lived process
                self.directory.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as out:
                    out.write(text)
        except OSError:
            logger.warning("could not write %d span(s) to %s", len(spans), self.directory, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def _prune(self, keep_days: int) -> None:
        cutoff = time.time() - keep_days * 86400
        for old in self.directory.glob("spans-*.jsonl"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """What `OTEL_TRACES_EXPORTER` asks for (default `file`); `[]` when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "file").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter(s) {unknown}; known: {', '.join(EXPORTERS)}")
    return [] if "none" in names else names


def traces_dir(env: Mapping[str, str]) -> Path | None:
    configured = env.get(TRACES_DIR_ENV)
    if configured:
        return Path(configured)
    home = env.get("DAGSTER_HOME")
    return Path(home) / "traces" if home else None


def build_exporters(env: Mapping[str, str], console_out: IO[str] | None = None) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names(env):
        if name == "file":
            directory = traces_dir(env)
            if directory is None:
                logger.warning("tracing: no $DAGSTER_HOME or $%s, so the file exporter has nowhere to write", TRACES_DIR_ENV)
                continue
            exporters.append(JsonLinesSpanExporter(directory, int(env.get(KEEP_DAYS_ENV, DEFAULT_KEEP_DAYS))))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        elif name == "console":
            exporters.append(ConsoleSpanExporter(**({"out": console_out} if console_out is not None else {})))
    return exporters


def provider_from_env(env: Mapping[str, str] | None = None) -> trace.TracerProvider:
    """A provider with the exporters the environment asks for (a no-op one when none)."""
    env = os.environ if env is None else env
    exporters = build_exporters(env)
    if not exporters:
        return trace.NoOpTracerProvider()
    service = env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=PRESET_IDS)
    batching = {argument: default for variable, (argument, default) in BATCH_SETTINGS.items() if not env.get(variable)}
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter, **batching))
    return provider


def tracer() -> trace.Tracer:
    """The process's tracer; the first call sets the provider up."""
    if _tracer is not None:
        return _tracer
    with _lock:
        if _tracer is None:
            installed = trace.get_tracer_provider()
            if isinstance(installed, trace.ProxyTracerProvider):
                try:
                    provider = provider_from_env()
                except Exception:  # noqa: BLE001 - a bad tracing setting must not stop the runs
                    logger.exception("tracing is off: its configuration could not be used")
                    provider = trace.NoOpTracerProvider()
                if not isinstance(provider, trace.NoOpTracerProvider):
                    trace.set_tracer_provider(provider)
                installed = provider
            _use(installed)
        assert _tracer is not None
        return _tracer


def use_provider(provider: trace.TracerProvider | None) -> trace.TracerProvider | None:
    """Make `provider` this process's (tests, embedding); None: set up from the environment
    again on next use. Returns the previous one."""
    with _lock:
        previous = _provider
        if provider is None:
            global _tracer
            _tracer = None
        else:
            _use(provider)
        return previous


def _use(provider: trace.TracerProvider) -> None:
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)


def preset_ids() -> PresetSpanIds | None:
    """The id generator of the process's provider when it is ours (None for one installed by
    someone else, whose span ids cannot be chosen in advance)."""
    tracer()
    generator = getattr(_provider, "id_generator", None)
    return generator if isinstance(generator, PresetSpanIds) else None


def enabled() -> bool:
    """Whether spans are recorded at all (the hooks skip every step when not)."""
    return not isinstance(tracer(), trace.NoOpTracer)


def flush(timeout_s: float = 5.0) -> None:
    """Export what has ended (a run ends its process soon after its step)."""
    provider = _provider
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        try:
            force_flush(int(timeout_s * 1000))
        except Exception:  # noqa: BLE001 - losing spans must not fail a run
            logger.warning("could not flush spans", exc_info=True)


def export_soon() -> None:
    """Export what has ended now, on a thread of its own (the dispatcher calls it when a burst's
    spans are recorded, so the export does not wait for its timer and fall in the next burst)."""
    global _exporting
    with _lock:
        if _exporting is not None and _exporting.is_alive():
            return
        _exporting = threading.Thread(target=flush, name="span-export", daemon=True)
        _exporting.start()
