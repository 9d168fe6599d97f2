"""Bring scheduled jobs in from OpenClaw and Hermes Agent, and hand them back.

`openclaw` and `hermes` read a product's cron jobs (through its own CLI or API, or its state
directory) and map each job to a task; `mapping` holds what both share (names, schedules,
prompts, the report); `catalog_file` writes the tasks into catalog YAML without touching
anything it did not write; `gateways` reads the list of gateways to import from.
"""
