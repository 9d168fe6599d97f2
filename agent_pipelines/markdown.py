"""Small Markdown tables for metadata shown in the Dagster UI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], limit: int = 500) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    count = 0
    for row in rows:
        count += 1
        if count <= limit:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if count > limit:
        lines.append(f"\n_{count - limit} more rows not shown._")
    if count == 0:
        lines.append("| " + " | ".join("-" for _ in headers) + " |")
    return "\n".join(lines)
