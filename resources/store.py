"""agent_pipelines' own tables as a Dagster resource, located from the Dagster instance."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from agent_pipelines.store import StateStore, url_for_instance


class StateStoreResource(dg.ConfigurableResource):
    """Leave `url` empty to keep the tables beside the instance's own storage."""

    url: str | None = None
    _store: StateStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        url = self.url
        if not url:
            if context.instance is None:
                raise dg.DagsterInvariantViolationError("the state store needs a Dagster instance")
            url = url_for_instance(context.instance)
        self._store = StateStore.for_url(url)

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise dg.DagsterInvariantViolationError("StateStoreResource used outside a run")
        return self._store
