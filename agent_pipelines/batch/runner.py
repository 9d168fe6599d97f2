"""Running a batch task's shards: every item once, concurrently, over healthy agent nodes.

One Dagster step runs all shards of its partition range in one event loop (a single-run
backfill: one process instead of one per shard). Each shard streams its items from the source
in bounded batches, sends them to its node (bounded by the node's `max_concurrency` and rate
limit), retries items on their own, and streams results into its Parquet file; memory stays
flat whatever the number of items. A node that is down before the run (health check) or goes
down during it (connections refused) hands its shards to the next healthy node.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import tempfile
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

from agent_pipelines.batch.items import Item, partition_key_for, read_item_batches, shard_of
from agent_pipelines.batch.evaluation import SAMPLES, ItemEvaluation, PromptChoice, VersionTally, result_columns
from agent_pipelines.batch.latency import Latencies
from agent_pipelines.batch.limits import RateLimiter
from agent_pipelines.batch.processes import PipeLog, group_by_node, process_count, run_in_processes
from agent_pipelines.batch.progress import ProgressBoard
from agent_pipelines.batch.summary import BUCKET_S
from agent_pipelines.batch.resume import ShardResume
from agent_pipelines.catalog.model import AgentSpecBase, TaskSpec
from agent_pipelines.catalog.templates import TemplateProblem, render
from agent_pipelines.agents.pool import AgentConnection, AgentPool
from agent_pipelines.json_codec import dumps_text, loads
from agent_pipelines.scheduling import event_loop
from agent_pipelines.scheduling.admission import Admission
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.load import LoadBoard
from agent_pipelines.scheduling.retries import retry_delay
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import StateStore
from agent_pipelines.agents.base import AgentCallError, AgentRequest, FailureKind, SessionState
from agent_pipelines.scheduling.run_log import never_raising

UTC = dt.timezone.utc
#: Items read from the source per batch, per shard.
READ_BATCH_ROWS = 1000
#: Results buffered before they go to the shard's Parquet file.
WRITE_BATCH_ROWS = 500
#: Consecutive connection failures after which a node counts as down.
NODE_DOWN_AFTER = 3
MAX_RATE_LIMIT_RETRIES = 20
SAMPLE_FAILURES = 5


@dataclass
class Node:
    name: str
    spec: AgentSpecBase
    health_path: str | None = None
    limiter: RateLimiter = field(init=False)
    connection: AgentConnection | None = None
    down_reason: str | None = None
    consecutive_connection_failures: int = 0

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.spec.rate_limit)

    @property
    def up(self) -> bool:
        return self.down_reason is None


@dataclass
class ShardSummary:
    key: str
    node: str
    path: str | None = None
    items: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latencies: Latencies = field(default_factory=Latencies)
    failure_samples: list[dict[str, str]] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)  # "node0 -> node1: connection refused"
    error: str | None = None  # the shard could not run at all
    resumed: int = 0  # items an earlier run of the same execution did: kept, not sent again
    total: int | None = None  # items of the shard in this run, once counted (for progress)
    started: float | None = None  # time.monotonic() when its items began to go out
    evaluated: int = 0  # answered items whose output was checked
    check_failed: int = 0  # of those, items that failed at least one check (still ok: see batch_checks)
    check_failures: dict[str, int] = field(default_factory=dict)  # check -> items that failed it
    check_samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # check -> a few failing items
    versions: dict[str, VersionTally] = field(default_factory=dict)  # prompt version -> its items' checks
    timeline: dict[int, Bucket] = field(default_factory=dict)  # time slot (epoch s // BUCKET_S) -> what finished

    def count_checks(self, row: Mapping[str, Any], failures: Mapping[str, str], *, key: str, canary: bool) -> None:
        """One checked answer, counted per check and per prompt version."""
        self.evaluated += 1
        version = row.get("prompt_version") or ""
        tally = self.versions.get(version)
        if tally is None:
            tally = self.versions[version] = VersionTally(version, canary)
        tally.add(key, row["item_id"], failures, row.get("output"))
        if not failures:
            return
        self.check_failed += 1
        for name, why in failures.items():
            self.check_failures[name] = self.check_failures.get(name, 0) + 1
            samples = self.check_samples.setdefault(name, [])
            if len(samples) < SAMPLES:
                samples.append({"item_id": row["item_id"], "prompt_version": version, "reason": why[:300], "output": (row.get("output") or "")[:300]})

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.items if self.items else 0.0

    def percentile(self, q: float) -> float | None:
        return self.latencies.percentile(q)


@dataclass
class Bucket:
    """What finished in one time slot of a shard (the run's time series)."""

    done: int = 0
    failed: int = 0
    check_failed: int = 0
    latencies: Latencies = field(default_factory=Latencies)


ItemSource = Callable[[], Iterator[list[Item]]]


def item_idempotency_key(task: str, item_id: str, trigger: Trigger) -> str:
    """One item of one execution: a re-run of the same due time (or event) re-uses it, so an
    agent that honours idempotency keys never acts twice on an item."""
    return f"agent-pipelines:{task}:item:{item_id}:{trigger.kind}:{trigger.ref}"

WriterFactory = Callable[[str], contextlib.AbstractContextManager]


class BatchRunner:
    #: Set by the asset after construction. Per item: its prompt version and the checks of its
    #: answer (None: the task's own prompt, no checks).
    evaluation: ItemEvaluation | None = None
    #: Where shards show up as they start, for a progress reporter on another thread.
    progress: ProgressBoard | None = None
    #: Where the run shares its nodes' load with every other run calling them (None: it does not).
    load_store: StateStore | None = None
    #: The run's id: with the process id, who holds the load views this run writes.
    run_id: str = "batch"

    def __init__(
        self,
        *,
        task: TaskSpec,
        nodes: Sequence[Node],
        shard_keys: Sequence[str],
        source: ItemSource,
        open_writer: WriterFactory,
        trigger: Trigger,
        variables: dict[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        log: logging.Logger | Any = None,
        pool_factory: Callable[[Mapping[str, AgentSpecBase]], AgentPool] = AgentPool,
        resume: ShardResume | None = None,
    ) -> None:
        self.task = task
        #: a re-run of the same execution keeps the items that already succeeded
        self.resume = resume
        self._succeeded: dict[str, set[str]] = {}
        self.pool_factory = pool_factory
        self.nodes = list(nodes)
        self.all_shard_keys = list(shard_keys)
        self.source = source
        self.open_writer = open_writer
        self.trigger = trigger
        self.variables = {**task.variables, **(variables or {})}
        #: template variables of the trigger (`event`, `upstream`), beside the item's own
        self.context = dict(context or {})
        self.log = never_raising(log or logging.getLogger(__name__))  # it logs while the database is down
        self.zone = zoneinfo.ZoneInfo(task.timezone)
        self._by_name = {node.name: node for node in self.nodes}
        self._shards_per_node: dict[str, int] = {}
        self._spooled: dict[str, int] = {}  # shard -> items spooled for it
        self._nodes_here: set[str] = set()  # over several processes: the nodes of this one's shards

    # -- shard -> node -----------------------------------------------------------------------

    def shard_for(self, item: Item) -> str:
        if self.task.shard_by is not None:
            return partition_key_for(item.fields.get(self.task.shard_by))
        return shard_of(item.id, self.all_shard_keys)

    def home_node(self, shard_key: str) -> Node:
        """A fleet shard named after a node goes to that node; others are spread round-robin."""
        by_name = {node.name: node for node in self.nodes}
        if shard_key in by_name:
            return by_name[shard_key]
        index = self.all_shard_keys.index(shard_key) if shard_key in self.all_shard_keys else hash_index(shard_key)
        return self.nodes[index % len(self.nodes)]

    def next_up(self, after: Node) -> Node | None:
        """The next healthy node, one of this process's own first (its concurrency is this
        process's to use; see `processes`)."""
        start = self.nodes.index(after)
        following = [self.nodes[(start + offset) % len(self.nodes)] for offset in range(1, len(self.nodes) + 1)]
        healthy = [node for node in following if node.up]
        own = [node for node in healthy if node.name in self._nodes_here]
        return (own or healthy or [None])[0]

    # -- the run --------------------------------------------------------------------------------

    async def run(self, shard_keys: Sequence[str]) -> list[ShardSummary]:
        """Every shard in this process's event loop."""
        keys = list(shard_keys)
        with tempfile.TemporaryDirectory(prefix="agent-pipelines-shards-") as spool:
            files = await self._prepare(keys, Path(spool))
            return await self._stream_shards(keys, files)

    def run_all(self, shard_keys: Sequence[str]) -> list[ShardSummary]:
        """Every shard, over as many processes as pay off (`processes.process_count`): call it
        outside an event loop (each process runs its own)."""
        keys = list(shard_keys)
        with tempfile.TemporaryDirectory(prefix="agent-pipelines-shards-") as spool:
            files = event_loop.run(self._prepare(keys, Path(spool)))
            count = process_count(sum(self._spooled.values()), len(self._shards_per_node), wanted=self.task.shard_processes)
            if count <= 1:
                return event_loop.run(self._stream_shards(keys, files))
            return run_in_processes(
                group_by_node(keys, lambda key: self.home_node(key).name, count),
                stream=lambda group: self._stream_group(group, files),
                prepare_child=self._as_child,
                log=self.log,
                parent_board=self.progress,
                new_summary=lambda key: ShardSummary(key=key, node=self.home_node(key).name),
            )

    async def _prepare(self, keys: list[str], spool: Path) -> dict[str, Path]:
        """Check the nodes, find what an earlier run of this execution did, spool the items."""
        await self._check_health()
        if self.resume is not None:
            for key in keys:
                self._succeeded[key] = await asyncio.to_thread(self.resume.succeeded_ids, key)
        files = await asyncio.to_thread(self._split, keys, spool)
        homes = [self.home_node(key).name for key in keys]
        self._shards_per_node = {name: homes.count(name) for name in set(homes)}
        return files

    async def _stream_shards(self, keys: list[str], files: Mapping[str, Path]) -> list[ShardSummary]:
        async with self._connections(), self._sharing_load():
            return list(await asyncio.gather(*(self._run_shard(key, files[key]) for key in keys)))

    @contextlib.asynccontextmanager
    async def _sharing_load(self) -> AsyncIterator[None]:
        """Share this process's nodes' load through the store as a dispatcher run does
        (`scheduling.load`): what the scheduled runs have in flight to a node counts against its
        one limit here, ours counts there, the limit goes on from the learned state, and `agent
        list` and the agents' assets show the batch's requests in flight."""
        if self.load_store is None:
            yield
            return
        board = LoadBoard(self.load_store, f"{self.run_id}:{os.getpid()}", SYSTEM_CLOCK, Admission(SYSTEM_CLOCK), self.log)
        gates = {
            node.spec.name: node.connection.gate
            for node in self.nodes
            if node.connection is not None and (not self._nodes_here or node.name in self._nodes_here)
        }
        try:
            await asyncio.to_thread(board.load, list(gates))
        except Exception as exc:  # noqa: BLE001 - advisory: the batch goes on from each node's max_concurrency
            self.log.warning(f"could not read the nodes' learned limits: {type(exc).__name__}: {exc}")
        for agent, gate in gates.items():
            board.track(agent, gate)
        syncing = asyncio.create_task(board.run())
        try:
            yield
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
            try:
                await board.sync(final=True)  # nothing of ours in flight any more
            except Exception as exc:  # noqa: BLE001 - the views are advisory; a stale one stops counting in 10 s
                self.log.warning(f"could not write the final load views: {type(exc).__name__}: {exc}")

    def _stream_group(self, keys: list[str], files: Mapping[str, Path]) -> list[ShardSummary]:
        """One process's shards (whole nodes) in its own event loop."""
        self._nodes_here = {self.home_node(key).name for key in keys}
        return event_loop.run(self._stream_shards(keys, files))

    def _as_child(self, send: Callable[[tuple[Any, ...]], None]) -> ProgressBoard:
        """In a forked child: log and progress go to the parent (see `processes`)."""
        self.log = PipeLog(send)
        self.progress = ProgressBoard()
        if self.load_store is not None:  # the parent's pooled connections are not this process's to use
            self.load_store.engine.dispose(close=False)
        return self.progress

    def _split(self, keys: list[str], directory: Path) -> dict[str, Path]:
        """Read the items once and spool each shard's items to its own file.

        Every shard reading the whole source would parse it once per shard; spooling keeps one
        pass, and memory flat (only file buffers), whatever the number of items.
        """
        files = {key: directory / f"{index}.jsonl" for index, key in enumerate(keys)}
        handles = {key: path.open("w", encoding="utf-8") for key, path in files.items()}
        self._spooled = dict.fromkeys(keys, 0)
        try:
            done: set[str] = set()
            for batch in self.source():
                for item in batch:
                    shard = self.shard_for(item)
                    handle = handles.get(shard)
                    # items of shards outside this run are left alone; items this execution
                    # already did are copied from the previous results instead of sent again
                    if handle is not None and item.id not in self._succeeded.get(shard, done):
                        handle.write(dumps_text([item.id, item.fields]) + "\n")
                        self._spooled[shard] += 1
        finally:
            for handle in handles.values():
                handle.close()
        return files

    @contextlib.asynccontextmanager
    async def _connections(self) -> AsyncIterator[None]:
        async with self.pool_factory({node.spec.name: node.spec for node in self.nodes}) as pool:
            for node in self.nodes:
                try:
                    node.connection = pool.connection(node.spec.name)
                except AgentCallError as error:
                    node.down_reason = error.message
            yield

    async def _check_health(self) -> None:
        async def check(node: Node) -> None:
            if not node.up:
                return
            node.down_reason = await probe(node)
            if node.down_reason:
                self.log.warning(f"node {node.name} is down before the run: {node.down_reason}")

        await asyncio.gather(*(check(node) for node in self.nodes))

    async def _run_shard(self, key: str, spooled: Path) -> ShardSummary:
        node = self.home_node(key)
        summary = ShardSummary(key=key, node=node.name)
        if not node.up:
            replacement = self.next_up(node)
            if replacement is None:
                summary.error = "no healthy node left in the fleet"
                return summary
            self._move(summary, node, replacement, node.down_reason or "down")
        try:
            with self.open_writer(key) as writer:
                if self._succeeded.get(key):
                    await asyncio.to_thread(self._carry_over, key, summary, writer)
                await self._stream(key, summary, writer, spooled)
                summary.path = str(getattr(writer, "path", "")) or None
            final = getattr(writer, "result", None)
            if final is not None:
                summary.path = str(final.path)
        except Exception as exc:  # noqa: BLE001 - one broken shard must not take the others down
            summary.error = f"{type(exc).__name__}: {exc}"
            self.log.error(f"shard {key} failed: {summary.error}")
        return summary

    def _carry_over(self, key: str, summary: ShardSummary, writer: Any) -> None:
        assert self.resume is not None
        for rows in self.resume.succeeded_rows(key):
            writer.write_rows(rows)
            summary.items += len(rows)
            summary.ok += len(rows)
            summary.resumed += len(rows)
        self.log.info(f"shard {key}: {summary.resumed} item(s) already succeeded in this execution; not sent again")

    async def _stream(self, key: str, summary: ShardSummary, writer: Any, spooled: Path) -> None:
        """A fixed pool of workers (the node's `max_concurrency`) takes the shard's items from
        batches read one ahead: no task per item, and at most two batches in memory."""
        # A node's concurrency is shared by the shards that start on it: more workers would only
        # queue on the node's semaphore.
        node = self._current(summary)
        sharing = max(1, self._shards_per_node.get(node.name, 1))
        workers = max(1, -(-node.spec.max_concurrency // sharing))
        items = SpooledItems(spooled, summary)
        results: list[dict[str, Any]] = []
        write_lock = asyncio.Lock()
        if self.progress is not None:
            # items carried over from an earlier run of the execution are counted already
            summary.total = summary.items + self._spooled[key]
            self.progress.add(summary)
        summary.started = time.monotonic()

        async def flush(minimum: int) -> None:
            if len(results) < minimum:
                return
            async with write_lock:
                rows = results[:]
                results.clear()
                if rows:
                    await asyncio.to_thread(writer.write_rows, rows)

        async def work() -> None:
            while (item := await items.next()) is not None:
                results.append(await self._run_item(item, key, summary))
                await flush(WRITE_BATCH_ROWS)

        async with self.evaluation.in_use() if self.evaluation is not None else contextlib.nullcontext():
            try:
                await asyncio.gather(*(work() for _ in range(workers)))
            finally:
                items.close()
            await flush(1)

    def _current(self, summary: ShardSummary) -> Node:
        return self._by_name[summary.node]

    def _move(self, summary: ShardSummary, from_node: Node, to_node: Node, reason: str) -> None:
        summary.moves.append(f"{from_node.name} -> {to_node.name}: {reason}")
        summary.node = to_node.name
        self.log.warning(f"shard {summary.key}: node {from_node.name} is down ({reason}); its items go to {to_node.name}")

    # -- one item -------------------------------------------------------------------------------

    async def _run_item(self, item: Item, key: str, summary: ShardSummary) -> dict[str, Any]:
        choice = self.prompt_for(item)
        row: dict[str, Any] = {
            "item_id": item.id,
            "item": item.fields,
            "shard": key,
            "node": summary.node,
            "status": "failed",
            "output": None,
            "error": None,
            "latency_ms": None,
            "tokens_in": None,
            "tokens_out": None,
            "attempts": 0,
            "prompt_version": choice.version,
        }
        try:
            request = self._request(item, key, choice)
        except TemplateProblem as problem:
            return self._finish(row, summary, error=f"config: prompt: {problem.message}")
        retries = rate_limited = 0
        while True:
            node = self._current(summary)
            if not node.up:
                replacement = self.next_up(node)
                if replacement is None:
                    return self._finish(row, summary, error="connection: no healthy node left in the fleet")
                self._move(summary, node, replacement, node.down_reason or "down")
                node = replacement
            await node.limiter.acquire()
            row["attempts"] += 1
            row["node"] = node.name
            try:
                assert node.connection is not None
                response = await node.connection.invoke(request)
            except AgentCallError as error:
                if error.kind is FailureKind.RATE_LIMITED and rate_limited < MAX_RATE_LIMIT_RETRIES:
                    rate_limited += 1
                    node.limiter.pause(error.retry_after_s if error.retry_after_s is not None else 1.0)
                    continue
                if error.kind is FailureKind.CONNECTION:
                    node.consecutive_connection_failures += 1
                    if node.consecutive_connection_failures >= NODE_DOWN_AFTER and node.up:
                        node.down_reason = error.message
                        if self.next_up(node) is not None:
                            continue  # to a healthy node, without using up a retry
                if error.is_retryable(self.task.idempotent) and retries < self.task.retries.count:
                    retries += 1
                    await asyncio.sleep(self._backoff(retries))
                    continue
                return self._finish(row, summary, error=error.describe())
            node.consecutive_connection_failures = 0
            node.limiter.spent_tokens((response.tokens_in or 0) + (response.tokens_out or 0))
            row.update(
                status="ok",
                output=response.output,
                latency_ms=response.latency_ms,
                tokens_in=response.tokens_in,
                tokens_out=response.tokens_out,
            )
            evaluation = self.evaluation
            if evaluation is not None and evaluation.checks is not None:
                tokens = (response.tokens_in or 0) + (response.tokens_out or 0)
                failures = await evaluation.failures(request.idempotency_key, request.prompt, response.output, response.latency_ms, tokens)
                row.update(result_columns(failures))
                summary.count_checks(row, failures, key=request.idempotency_key, canary=choice.canary)
            return self._finish(row, summary)

    def prompt_for(self, item: Item) -> PromptChoice:
        """The prompt version an item goes out with: chosen from its idempotency key, so the
        canary's share is a share of items and a re-run sends an item the same prompt."""
        if self.evaluation is None:
            return PromptChoice(self.task, None)
        return self.evaluation.choose(item_idempotency_key(self.task.name, item.id, self.trigger))

    def _request(self, item: Item, key: str, choice: PromptChoice) -> AgentRequest:
        chosen = choice.task
        idempotency_key = item_idempotency_key(self.task.name, item.id, self.trigger)
        prompt = render(chosen.prompt, {**self._base_context, "item": item.fields, "shard": key, "now": dt.datetime.now(self.zone)})
        return AgentRequest(
            prompt=prompt,
            system=render(chosen.system, {"item": item.fields, "shard": key, **self.variables}) if chosen.system else None,
            idempotency_key=idempotency_key,
            session=SessionState(mode="isolated", key=idempotency_key),
            timeout_s=self._timeout_s,
            task=self.task.name,
            variables=self.variables,
        )

    @functools.cached_property
    def _base_context(self) -> dict[str, Any]:
        """What every item's prompt sees besides the item itself (built once per run)."""
        due = self.trigger.due_time.astimezone(self.zone) if self.trigger.due_time else dt.datetime.now(self.zone)
        return {**self.variables, **self.context, "task": self.task.name, "due_time": due, "trigger": self.trigger.kind}

    @functools.cached_property
    def _timeout_s(self) -> float:
        return self.task.timeout or self.nodes[0].spec.timeout

    def _backoff(self, retry: int) -> float:
        return retry_delay(self.task.retries, retry)

    def _finish(self, row: dict[str, Any], summary: ShardSummary, error: str | None = None) -> dict[str, Any]:
        finished = row["finished_at"] = dt.datetime.now(UTC)
        slot = int(finished.timestamp()) // BUCKET_S
        bucket = summary.timeline.get(slot)
        if bucket is None:
            bucket = summary.timeline[slot] = Bucket()
        bucket.done += 1
        if row["attempts"] > 1:
            summary.retried += 1
        if error is None:
            summary.ok += 1
            latency = float(row["latency_ms"])
            summary.latencies.add(latency)
            bucket.latencies.add(latency)
            bucket.check_failed += row.get("checks_passed") is False
            summary.tokens_in += row["tokens_in"] or 0
            summary.tokens_out += row["tokens_out"] or 0
        else:
            row["error"] = error
            summary.failed += 1
            bucket.failed += 1
            if len(summary.failure_samples) < SAMPLE_FAILURES:
                summary.failure_samples.append({"item_id": row["item_id"], "error": error[:300]})
        return row


async def probe(node: Node) -> str | None:
    """None when the node answers its health check (or accepts a TCP connection)."""
    base = node.spec.base_url or ""
    if node.health_path:
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + node.health_path, timeout=aiohttp.ClientTimeout(total=3)) as response:
                    return None if response.status < 300 else f"health check answered HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return f"health check failed: {exc!r}"
    parsed = urlparse(base)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), timeout=3)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"cannot connect to {parsed.hostname}:{port}: {exc!r}"
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return None


def read_spooled(path: Path) -> Iterator[list[Item]]:
    with path.open(encoding="utf-8") as handle:
        batch: list[Item] = []
        for line in handle:
            item_id, fields = loads(line)
            batch.append(Item(id=item_id, fields=fields))
            if len(batch) >= READ_BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch


class SpooledItems:
    """A shard's spooled items for its workers: a batch is parsed on a thread while the one
    before it is sent, so workers neither wait for the file nor hand items over one by one."""

    def __init__(self, path: Path, summary: ShardSummary) -> None:
        self._batches = read_spooled(path)
        self._summary = summary
        self._current: collections.deque[Item] = collections.deque()
        self._next: asyncio.Future[list[Item] | None] | None = None
        self._lock = asyncio.Lock()
        self._done = False

    async def next(self) -> Item | None:
        while not self._current:
            if self._done:
                return None
            async with self._lock:
                if self._current or self._done:
                    continue
                batch = await (self._next or self._read())
                self._next = None
                if batch is None:
                    self._done = True
                    return None
                self._summary.items += len(batch)
                self._current.extend(batch)
                self._next = self._read()
        return self._current.popleft()

    def _read(self) -> asyncio.Future[list[Item] | None]:
        return asyncio.ensure_future(asyncio.to_thread(next, self._batches, None))

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()


def hash_index(value: str) -> int:
    import zlib

    return zlib.crc32(value.encode())


def file_source(path: str, fmt: str | None, id_column: str | None) -> ItemSource:
    return lambda: read_item_batches(Path(path), format=fmt, id_column=id_column, batch_rows=READ_BATCH_ROWS)


def results_source(paths: Sequence[str]) -> ItemSource:
    """Items from another batch task's results: its successful rows, with their output."""

    def batches() -> Iterator[list[Item]]:
        from resources.shard_io_manager import iter_result_batches

        for record_batch in iter_result_batches(paths, batch_rows=READ_BATCH_ROWS):
            rows = record_batch.to_pylist()
            yield [
                Item(id=row["item_id"], fields={**json.loads(row["item"] or "{}"), "output": row["output"]})
                for row in rows
                if row["status"] == "ok"
            ]

    return batches
