"""Latencies of a shard (or a time slot) in bounded memory, whatever the number of items.

A million items must not mean a million floats: percentiles come from a DDSketch (DataDog's
quantile sketch, 1% relative error), and the histogram is a fixed set of 1-2-5 ms bins.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from ddsketch import DDSketch

#: Upper edges of the latency histogram's bins, in ms (1-2-5 steps).
HISTOGRAM_EDGES_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000, 300_000)
RELATIVE_ACCURACY = 0.01


class Latencies:
    """Count, percentiles and histogram of latencies in ms; `add` is about a microsecond."""

    __slots__ = ("_sketch", "bins", "count")

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._sketch = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
        #: items per bin: bin i holds (edges[i-1], edges[i]]; the last one everything above
        self.bins = [0] * (len(HISTOGRAM_EDGES_MS) + 1)
        self.count = 0
        for value in values:
            self.add(value)

    def add(self, value: float) -> None:
        self._sketch.add(max(value, 0.0))
        self.bins[bisect.bisect_left(HISTOGRAM_EDGES_MS, value)] += 1
        self.count += 1

    def merge(self, other: Latencies) -> None:
        if other.count:
            self._sketch.merge(other._sketch)
            self.bins = [a + b for a, b in zip(self.bins, other.bins, strict=True)]
            self.count += other.count

    def percentile(self, q: float) -> float | None:
        """The `q`-th percentile (0-100), within 1%; None when empty."""
        if not self.count:
            return None
        return float(self._sketch.get_quantile_value(q / 100))

    def histogram(self) -> list[tuple[float, float, int]]:
        """(lower, upper, items) per bin, from the first non-empty bin to the last."""
        used = [i for i, count in enumerate(self.bins) if count]
        if not used:
            return []
        edges = [0.0, *HISTOGRAM_EDGES_MS, math.inf]
        return [(edges[i], edges[i + 1], self.bins[i]) for i in range(used[0], used[-1] + 1)]

    def __len__(self) -> int:
        return self.count
