"""agent_pipelines' own tables as a Dagster resource: the one place their URL is decided."""

from __future__ import annotations

import dagster as dg

from agent_pipelines.store import StateStore, url_for_instance

STORE_KEY = "store"


class StoreResource(dg.ConfigurableResource):
    """Leave `url` empty to keep the tables beside the instance's own storage (its PostgreSQL
    database, or `agent_pipelines.db` in DAGSTER_HOME)."""

    url: str | None = None

    def for_instance(self, instance: dg.DagsterInstance) -> StateStore:
        return StateStore.for_url(self.url or url_for_instance(instance))
