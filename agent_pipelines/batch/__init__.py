"""Batch tasks: one agent prompt per row of an items file; shards are Dagster partitions."""
