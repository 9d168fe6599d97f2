"""Running coroutines on the fastest event loop available.

uvloop (libuv) roughly halves the per-request CPU of the asyncio loop on this hot path; the
batch benchmark measured ~2x the items per second (benchmarks/RESULTS.md). Without it (Windows),
the standard loop is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
    uvloop = None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    if uvloop is not None:
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
