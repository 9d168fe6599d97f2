"""httpx vs aiohttp on the agents' hot path: the same requests to the same loopback demo agent
(its own process, 50 ms answers), measured in one run.

    .venv/bin/python benchmarks/bench_clients.py

Prints, per client: time to send N requests at once (spread of their arrival at the agent,
which is what a burst of due tasks costs), and throughput at 16 connections per client.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_batch import TOKEN, agent_processes  # noqa: E402

BODY = {"model": "demo-model", "messages": [{"role": "user", "content": "hello"}]}


async def burst_httpx(url: str, n: int) -> float:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)) as client:
        await asyncio.gather(*(client.post(url, json=BODY, headers=_headers()) for _ in range(n)))  # warm
        started = time.perf_counter()
        await asyncio.gather(*(client.post(url, json=BODY, headers=_headers()) for _ in range(n)))
        return time.perf_counter() - started


async def burst_aiohttp(url: str, n: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:

        async def one() -> None:
            async with session.post(url, json=BODY, headers=_headers()) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(n)))  # warm
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - started


async def throughput(url: str, client: str, total: int, clients: int, connections: int) -> float:
    async def run_httpx() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)) as c:
            for _ in range(total // clients // connections):
                await asyncio.gather(*(c.post(url, json=BODY, headers=_headers()) for _ in range(connections)))

    async def run_aiohttp() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

            async def one() -> None:
                async with s.post(url, json=BODY, headers=_headers()) as response:
                    await response.read()

            for _ in range(total // clients // connections):
                await asyncio.gather(*(one() for _ in range(connections)))

    started = time.perf_counter()
    await asyncio.gather(*((run_httpx if client == "httpx" else run_aiohttp)() for _ in range(clients)))
    return total / (time.perf_counter() - started)


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": uuid.uuid4().hex}


def main() -> None:
    with agent_processes(latency_ms=50) as urls:
        url = f"{urls[0]}/v1/chat/completions"
        print("== one burst: N requests sent at once, time until all answered (50 ms agent)")
        for n in (40, 200):
            h = min(asyncio.run(burst_httpx(url, n)) for _ in range(3))
            a = min(asyncio.run(burst_aiohttp(url, n)) for _ in range(3))
            print(f"  N={n:4d}: httpx {h * 1000:7.0f} ms   aiohttp {a * 1000:7.0f} ms   ratio {h / a:.1f}x")
        print("== throughput, 4 clients x 16 connections, 4,096 requests")
        h = asyncio.run(throughput(url, "httpx", 4096, 4, 16))
        a = asyncio.run(throughput(url, "aiohttp", 4096, 4, 16))
        print(f"  httpx {h:6.0f} req/s   aiohttp {a:6.0f} req/s   ratio {a / h:.1f}x")


if __name__ == "__main__":
    main()
