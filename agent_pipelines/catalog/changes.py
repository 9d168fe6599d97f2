"""What changed between two loads of the catalog, item by item, for the audit log."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agent_pipelines.catalog.loader import Catalog

#: Names listed per kind of change in one audit entry; the counts are always complete.
LISTED = 50


@dataclass(frozen=True)
class ItemDigest:
    digest: str
    source: str | None  # file:line


@dataclass(frozen=True)
class CatalogChange:
    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> dict[str, object]:
        return {
            "added": self.added[:LISTED], "removed": self.removed[:LISTED], "changed": self.changed[:LISTED],
            "counts": {"added": len(self.added), "removed": len(self.removed), "changed": len(self.changed)},
        }


def item_digests(catalog: Catalog) -> dict[str, ItemDigest]:
    """`task:<name>`, `agent:<name>`, ... → a digest of its validated spec and where it is declared."""
    kinds = {"agent": catalog.agents, "fleet": catalog.fleets, "task": catalog.tasks, "source": catalog.sources, "budget": catalog.budgets}
    digests: dict[str, ItemDigest] = {}
    for kind, specs in kinds.items():
        for name, spec in specs.items():
            item = f"{kind}:{name}"
            location = catalog.locations.get(item)
            source = f"{location.file}:{location.line}" if location and location.line else (location.file if location else None)
            digests[item] = ItemDigest(hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32], source)
    return digests


def content_digest(digests: dict[str, ItemDigest]) -> str:
    combined = hashlib.sha256()
    for item in sorted(digests):
        combined.update(f"{item}={digests[item].digest};".encode())
    return combined.hexdigest()[:16]


def compare(before: dict[str, str], after: dict[str, ItemDigest]) -> CatalogChange:
    return CatalogChange(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=sorted(item for item in set(before) & set(after) if before[item] != after[item].digest),
    )
