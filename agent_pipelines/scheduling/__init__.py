"""Scheduling, in one place: when tasks are due (`timing`, `planning`), which runs carry them
(`planning`, `plans`, `scheduler`), and how a run sends them (`dispatcher` and its helpers:
`prepare`, `attempts`, `sessions`, `agent_health`, `recorder`, `publication`, `carrier`).

Dagster cannot fire at second precision or follow one execution with another within a second,
so this package does that, inside Dagster runs; everything it records reaches Dagster as asset
materializations and check evaluations of the run that carried it.
"""
