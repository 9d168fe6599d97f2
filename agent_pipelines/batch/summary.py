"""What a batch run's shards show in Dagster: numbers the asset's Plots tab draws over runs,
and tables of the run (its shards, a latency histogram, a time series) on each materialization.

Every number is Dagster metadata of a shard's materialization: `latency_p50_ms` ... `_p99_ms`,
`failed`, `check_pass_rate` are plotted per partition across runs by the UI. The tables describe
the run the shard was part of, so whichever shard one opens shows the whole run; the time series
also comes as a text plot (Markdown), since Dagster draws no chart of a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from agent_pipelines.batch.latency import Latencies
from agent_pipelines.metadata import table

if TYPE_CHECKING:
    from agent_pipelines.batch.runner import ShardSummary

#: Seconds per slot of a run's time series (the runner counts in slots of this size).
BUCKET_S = 5
#: Rows of a time series at most: longer runs get wider slots.
MAX_TIMELINE_ROWS = 120
_SPARKS = "▁▂▃▄▅▆▇█"


def percentiles(latencies: Latencies, qs: Iterable[int] = (50, 95, 99)) -> dict[int, float]:
    """Percentiles (within 1%) of a shard's or a slot's latencies; empty when there are none."""
    if not latencies.count:
        return {}
    return {q: round(cut, 3) for q in qs if (cut := latencies.percentile(q)) is not None}


def check_pass_rate(summary: ShardSummary) -> float | None:
    """Share of the shard's checked items that passed every check."""
    return (summary.evaluated - summary.check_failed) / summary.evaluated if summary.evaluated else None


def latency_histogram(latencies: Latencies) -> dg.MetadataValue:
    """Items per latency bin (1-2-5 ms steps), from the first non-empty bin to the last."""
    columns = {"latency": "string", "items": "int", "share": "float"}
    rows = []
    for lower, upper, count in latencies.histogram():
        label = f"> {_ms(lower)}" if math.isinf(upper) else f"≤ {_ms(upper)}"
        rows.append({"latency": label, "items": count, "share": round(count / latencies.count, 4)})
    return table(columns, rows)


def run_table(summaries: Sequence[ShardSummary]) -> dg.MetadataValue:
    """The run's shards, one row each: the per-run summary."""
    columns = {
        "shard": "string", "node": "string", "items": "int", "ok": "int", "failed": "int", "failed_checks": "int",
        "check_pass_rate": "float", "p50_ms": "float", "p95_ms": "float", "p99_ms": "float", "retried": "int", "error": "string",
    }
    rows = []
    for summary in summaries:
        cuts = percentiles(summary.latencies)
        rows.append(
            {
                "shard": summary.key, "node": summary.node, "items": summary.items, "ok": summary.ok, "failed": summary.failed,
                "failed_checks": summary.check_failed, "check_pass_rate": check_pass_rate(summary),
                "p50_ms": cuts.get(50), "p95_ms": cuts.get(95), "p99_ms": cuts.get(99), "retried": summary.retried,
                "error": summary.error,
            }
        )
    return table(columns, rows)


def version_table(summary: ShardSummary, active: str | None) -> dg.MetadataValue:
    """The shard's checked items per prompt version: the active one and the canary, side by side."""
    columns = {"prompt_version": "string", "role": "string", "items": "int", "passed": "int", "pass_rate": "float"}
    rows = [
        {
            "prompt_version": tally.version,
            "role": "canary" if tally.canary else "active" if tally.version == active else "other",
            "items": tally.items,
            "passed": tally.passed,
            "pass_rate": tally.pass_rate,
        }
        for tally in summary.versions.values()
    ]
    return table(columns, rows)


def timeline(summaries: Sequence[ShardSummary]) -> list[dict[str, Any]]:
    """The run's items per time slot, over all its shards: done, failed, failed checks, p50."""
    merged: dict[int, list[Any]] = {}
    for summary in summaries:
        for slot, bucket in summary.timeline.items():
            entry = merged.setdefault(slot, [0, 0, 0, Latencies()])
            entry[0] += bucket.done
            entry[1] += bucket.failed
            entry[2] += bucket.check_failed
            entry[3].merge(bucket.latencies)
    if not merged:
        return []
    first, last = min(merged), max(merged)
    width = max(1, math.ceil((last - first + 1) / MAX_TIMELINE_ROWS))
    rows = []
    for start in range(first, last + 1, width):
        slots = [merged[s] for s in range(start, min(start + width, last + 1)) if s in merged]
        latencies = Latencies()
        for slot in slots:
            latencies.merge(slot[3])
        done = sum(slot[0] for slot in slots)
        rows.append(
            {
                "t_s": (start - first) * BUCKET_S,
                "done": done,
                "failed": sum(slot[1] for slot in slots),
                "failed_checks": sum(slot[2] for slot in slots),
                "items_per_s": round(done / (width * BUCKET_S), 2),
                "p50_ms": percentiles(latencies, (50,)).get(50),
            }
        )
    return rows


def timeline_table(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    columns = {"t_s": "int", "done": "int", "failed": "int", "failed_checks": "int", "items_per_s": "float", "p50_ms": "float"}
    return table(columns, rows)


def timeline_plot(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """The time series as sparklines: throughput, failures and median latency over the run."""
    if not rows:
        return dg.MetadataValue.md("No item finished in this run.")
    step = rows[1]["t_s"] - rows[0]["t_s"] if len(rows) > 1 else BUCKET_S
    series = [
        ("items/s", [r["items_per_s"] for r in rows], ""),
        ("failed", [r["failed"] for r in rows], ""),
        ("failed checks", [r["failed_checks"] for r in rows], ""),
        ("p50 latency", [r["p50_ms"] for r in rows], " ms"),
    ]
    lines = [f"{name:<14}{_spark(values)}  max {_number(max((v for v in values if v is not None), default=0))}{unit}" for name, values, unit in series]
    span = rows[-1]["t_s"] + step
    return dg.MetadataValue.md(
        f"One column per {step} s, {span} s in all (every shard of the run).\n\n```text\n" + "\n".join(lines) + "\n```"
    )


def _spark(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    top = max(present, default=0) or 1
    return "".join(" " if v is None else _SPARKS[min(len(_SPARKS) - 1, int(v / top * (len(_SPARKS) - 1) + 0.5))] for v in values)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.1f}"


def _ms(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


def run_metadata(summaries: Sequence[ShardSummary]) -> dict[str, dg.MetadataValue]:
    """The run's tables: its shards, and its time series as a table and as a text plot."""
    rows = timeline(summaries)
    return {
        "run_shards": run_table(summaries),
        "run_timeline": timeline_table(rows),
        "run_plot": timeline_plot(rows),
    }
