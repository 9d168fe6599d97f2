"""Resuming an execution: a re-run of the same due time (or event, or launch) keeps the items
that already succeeded and sends only the rest.

The previous results of a shard stay in its Parquet file until the new file replaces it (the
writer publishes atomically on success), and each row names its execution. Ids are read in a
first pass (one column, so a shard's set of ids is all that is held), rows copied in a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from resources.shard_io_manager import Location, open_parquet

READ_ROWS = 10_000


@dataclass(frozen=True)
class ShardResume:
    """Where each shard's previous results are, and which execution they must belong to."""

    execution: str
    path_of: Callable[[str], Location]

    def succeeded_ids(self, shard: str) -> set[str]:
        ids: set[str] = set()
        for batch in self._succeeded(shard, columns=["item_id", "status", "execution"]):
            ids.update(batch.column("item_id").to_pylist())
        return ids

    def succeeded_rows(self, shard: str) -> Iterator[list[dict[str, Any]]]:
        for batch in self._succeeded(shard, columns=None):
            yield batch.to_pylist()

    def _succeeded(self, shard: str, columns: list[str] | None) -> Iterator[pa.Table]:
        path = self.path_of(shard)
        if not path.exists():
            return
        with open_parquet(path) as parquet:
            if "execution" not in parquet.schema_arrow.names:
                return  # written before results named their execution: nothing to resume
            for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=columns):
                table = pa.Table.from_batches([batch])
                mask = pc.and_(pc.equal(table.column("execution"), self.execution), pc.equal(table.column("status"), "ok"))
                kept = table.filter(mask)
                if kept.num_rows:
                    yield kept
