"""The catalog's items as last loaded (see agent_pipelines.catalog.changes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import sqlalchemy as sa

from agent_pipelines.store import schema
from agent_pipelines.store.base import StoreBase, chunks, utcnow


class _Digest(Protocol):
    digest: str
    source: str | None


class CatalogItemRecords(StoreBase):
    def catalog_item_digests(self) -> dict[str, str]:
        table = schema.catalog_items
        with self.engine.connect() as conn:
            return {row.item: row.digest for row in conn.execute(sa.select(table.c.item, table.c.digest))}

    def replace_catalog_items(self, upserts: Mapping[str, _Digest], removed: Sequence[str]) -> None:
        table = schema.catalog_items
        now = utcnow()
        rows = [{"item": item, "digest": d.digest, "source": d.source, "updated_at": now} for item, d in upserts.items()]
        statement = self._insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.item],
            set_={"digest": statement.excluded.digest, "source": statement.excluded.source, "updated_at": now},
        )
        with self.engine.begin() as conn:
            for part in chunks(rows):
                conn.execute(statement, list(part))
            for part in chunks(list(removed)):
                conn.execute(table.delete().where(table.c.item.in_(list(part))))
