"""What the Dagster UI shows of an agent's load: an observation on its asset (`agents/<name>`)
with requests in flight and waiting, its learned limit and latency (numeric metadata, so the UI
plots them over time), and its `not_saturated` check, failed while executions wait too long for
it or wait past their deadline. A fleet's nodes have no asset of their own: their totals and one
row per node go on the fleet's asset (`fleets/<name>`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from agent_pipelines.scheduling.load import SATURATED_FOR, SATURATED_WAIT_S, LoadSummary, node_saturated
from agent_pipelines.scheduling.publication import agent_asset_key, fleet_asset_key

NOT_SATURATED_CHECK = "not_saturated"
#: A fleet may have thousands of nodes: its observation lists the busiest this many.
MAX_NODE_ROWS = 100
NODE_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("node", "string"),
        dg.TableColumn("in_flight", "int"),
        dg.TableColumn("limit", "int"),
        dg.TableColumn("max_concurrency", "int"),
        dg.TableColumn("latency_ms", "float"),
        dg.TableColumn("saturated", "bool", description="executions waited too long for it, or it is kept busy at a limit cut below max_concurrency"),
        dg.TableColumn("updated_at", "string", description="its newest load view (blank: no run called it yet)"),
    ]
)
CHECK_DESCRIPTION = (
    f"The agent keeps up: no execution has waited {SATURATED_WAIT_S:g} s for it in the platform's queue, "
    f"and none waited past its deadline in the last {int(SATURATED_FOR.total_seconds() // 60)} minutes."
)
FLEET_CHECK_DESCRIPTION = (
    "Every node keeps up: none is kept busy at a limit its latency or errors cut below its max_concurrency, "
    f"no execution has waited {SATURATED_WAIT_S:g} s for one, and none waited past its deadline in the last "
    f"{int(SATURATED_FOR.total_seconds() // 60)} minutes."
)
#: Saturated nodes named in a fleet check's description (the rest are counted).
MAX_NAMED_NODES = 5


def load_metadata(summary: LoadSummary) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "in_flight": dg.MetadataValue.int(summary.in_flight),
        "queued": dg.MetadataValue.int(summary.queued),
        "limit": dg.MetadataValue.int(summary.limit),
        "max_concurrency": dg.MetadataValue.int(summary.max_limit),
        "skipped_saturated": dg.MetadataValue.int(summary.skipped),
        "saturated": dg.MetadataValue.bool(summary.saturated),
        "measuring_baseline": dg.MetadataValue.bool(summary.measuring_baseline),
        "load_updated_at": dg.MetadataValue.timestamp(summary.updated_at),
    }
    if summary.latency_ms is not None:
        metadata["latency_ms"] = dg.MetadataValue.float(summary.latency_ms)
    if summary.baseline_ms is not None:
        metadata["baseline_latency_ms"] = dg.MetadataValue.float(summary.baseline_ms)
    if summary.solo_ms is not None:
        metadata["solo_latency_ms"] = dg.MetadataValue.float(summary.solo_ms)
    if summary.oldest_wait_s is not None:
        metadata["oldest_wait_s"] = dg.MetadataValue.float(round(summary.oldest_wait_s, 3))
    return metadata


def load_observation(summary: LoadSummary) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=agent_asset_key(summary.agent), metadata=load_metadata(summary))


def fleet_load_metadata(nodes: Mapping[str, int], loads: Mapping[str, LoadSummary]) -> dict[str, Any]:
    """`fleet_load_totals` and a `nodes` table: every node, or the 100 busiest of a larger fleet."""
    shown = sorted(nodes)
    if len(shown) > MAX_NODE_ROWS:
        shown = sorted(_busiest(shown, loads)[:MAX_NODE_ROWS])
    table = dg.MetadataValue.table([_node_row(n, nodes[n], loads.get(n)) for n in shown], schema=NODE_COLUMNS)
    return {**fleet_load_totals(nodes, loads), "nodes": table}


def fleet_load_totals(nodes: Mapping[str, int], loads: Mapping[str, LoadSummary]) -> dict[str, Any]:
    """Totals over a fleet's nodes (numbers, so the UI plots them).

    `nodes` maps each node's agent name to its `max_concurrency`: a node no run has called yet
    counts at that limit, as `agent list` shows it. `latency_ms` is the mean over the nodes that
    have one.
    """
    found = [loads[node] for node in nodes if node in loads]
    latencies = [s.latency_ms for s in found if s.latency_ms is not None]
    metadata: dict[str, Any] = {
        "in_flight": dg.MetadataValue.int(sum(s.in_flight for s in found)),
        "queued": dg.MetadataValue.int(sum(s.queued for s in found)),
        "limit": dg.MetadataValue.int(sum(loads[n].limit if n in loads else most for n, most in nodes.items())),
        "max_concurrency": dg.MetadataValue.int(sum(loads[n].max_limit if n in loads else most for n, most in nodes.items())),
        "nodes_busy": dg.MetadataValue.int(sum(1 for s in found if s.in_flight > 0)),
        "nodes_saturated": dg.MetadataValue.int(sum(1 for s in found if node_saturated(s))),
        "nodes_reporting": dg.MetadataValue.int(len(found)),
    }
    if latencies:
        metadata["latency_ms"] = dg.MetadataValue.float(round(sum(latencies) / len(latencies), 3))
    if found:
        metadata["load_updated_at"] = dg.MetadataValue.timestamp(max(s.updated_at for s in found))
    if len(nodes) > MAX_NODE_ROWS:
        metadata["nodes_not_listed"] = dg.MetadataValue.int(len(nodes) - MAX_NODE_ROWS)
    return metadata


def _busiest(nodes: list[str], loads: Mapping[str, LoadSummary]) -> list[str]:
    """Saturated nodes first, then most in flight; nodes no run called yet last."""
    return sorted(nodes, key=lambda n: (not node_saturated(loads[n]), -loads[n].in_flight, n) if n in loads else (True, 1, n))


def _node_row(node: str, max_concurrency: int, load: LoadSummary | None) -> dg.TableRecord:
    if load is None:  # no run has called it: blank cells, its limit is its max_concurrency
        cells = {"in_flight": None, "limit": max_concurrency, "max_concurrency": max_concurrency, "latency_ms": None, "saturated": False, "updated_at": None}
    else:
        cells = {
            "in_flight": load.in_flight,
            "limit": load.limit,
            "max_concurrency": load.max_limit,
            "latency_ms": load.latency_ms,
            "saturated": node_saturated(load),
            "updated_at": load.updated_at.isoformat(timespec="seconds"),
        }
    return dg.TableRecord({"node": node, **cells})


def fleet_load_observation(fleet: str, nodes: Mapping[str, int], loads: Mapping[str, LoadSummary]) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=fleet_asset_key(fleet), metadata=fleet_load_metadata(nodes, loads))


def saturation_evaluation(agent: str, summary: LoadSummary | None) -> dg.AssetCheckEvaluation:
    if summary is None:
        return dg.AssetCheckEvaluation(
            asset_key=agent_asset_key(agent),
            check_name=NOT_SATURATED_CHECK,
            passed=True,
            description="No run has called this agent yet.",
        )
    state = "Saturated" if summary.saturated else "Keeps up"
    return dg.AssetCheckEvaluation(
        asset_key=agent_asset_key(agent),
        check_name=NOT_SATURATED_CHECK,
        passed=not summary.saturated,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{state}: {summary.describe()}"[:1000],
        metadata=load_metadata(summary),
    )


def saturated_nodes(nodes: Iterable[str], loads: Mapping[str, LoadSummary]) -> list[str]:
    return sorted(node for node in nodes if node in loads and node_saturated(loads[node]))


def _why_saturated(load: LoadSummary) -> str:
    return "" if load.saturated else f" (held to {load.limit} of {load.max_limit} by its latency or errors)"


def fleet_saturation_evaluation(fleet: str, nodes: Mapping[str, int], loads: Mapping[str, LoadSummary]) -> dg.AssetCheckEvaluation:
    """Failed (a warning, as an agent's) while any node is saturated (`node_saturated`): a
    batch's shards on that node take longer however idle the others are. Names the first."""
    key = fleet_asset_key(fleet)
    reporting = [node for node in nodes if node in loads]
    if not reporting:
        return dg.AssetCheckEvaluation(
            asset_key=key, check_name=NOT_SATURATED_CHECK, passed=True, description="No run has called this fleet's nodes yet."
        )
    saturated = saturated_nodes(nodes, loads)
    if saturated:
        named = "; ".join(f"{node}{_why_saturated(loads[node])}: {loads[node].describe()}" for node in saturated[:MAX_NAMED_NODES])
        more = f"; and {len(saturated) - MAX_NAMED_NODES} more" if len(saturated) > MAX_NAMED_NODES else ""
        description = f"Saturated: {len(saturated)} of {len(nodes)} nodes. {named}{more}"
    else:
        description = f"Keeps up: no node saturated ({len(reporting)} of {len(nodes)} nodes called so far)."
    metadata = fleet_load_totals(nodes, loads)
    metadata["saturated_nodes"] = dg.MetadataValue.text(", ".join(saturated[:MAX_NODE_ROWS]) or "none")
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=NOT_SATURATED_CHECK,
        passed=not saturated,
        severity=dg.AssetCheckSeverity.WARN,
        description=description[:1000],
        metadata=metadata,
    )
