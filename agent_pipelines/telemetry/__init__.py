"""Tracing (OpenTelemetry) and metrics (Prometheus) of the executions: docs/observability.md.

`tracing` sets a tracer provider up once per process from the standard `OTEL_*` variables (spans
go to JSON lines under `$DAGSTER_HOME/traces/` by default, nothing leaves the machine);
`spans` holds the few hooks the dispatcher and the HTTP transport call; `metrics` serves
Prometheus text read from the store at scrape time, so every run process counts.
"""
