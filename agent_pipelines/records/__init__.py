"""Execution records: search them (filters, keyset pages), show them (CLI, `/ops/executions`),
and keep them from growing forever (retention: archive or delete in bounded batches).

The queries live in the store (`agent_pipelines.store.records`); this package turns what people
type into filters, renders pages, runs retention and builds the indexes searching needs.
"""
