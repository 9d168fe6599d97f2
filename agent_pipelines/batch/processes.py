"""A run's shards over several processes: one event loop tops out near one core (an answer costs
~0.5 ms of CPU in the run against ~0.3 ms in a bare aiohttp loop), and when it is busy every
round trip waits for it, so a big batch is spread over as many processes as the machine has
cores (benchmarks/RESULTS.md, issue 13).

The run's process reads the source once and spools each shard's items (as before), then forks:
each child streams the shards of whole nodes (a node's `max_concurrency` stays in one process),
the parent streams its own group, and the children send their shards' progress every half
second, their log lines and, at the end, their shard summaries back over a pipe. Forking after
the spool needs nothing rebuilt in the child (catalog, prompt choice, evaluation, writers); the
child only opens its own connections, and ends with `os._exit` so nothing of the parent's
(database connections, Dagster's handlers) runs twice.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from agent_pipelines.batch.progress import ProgressBoard

#: Below this many items per process a second process costs more than it saves.
MIN_ITEMS_PER_PROCESS = 20_000
#: How often a child reports its shards' counters (the run's progress shows them).
PROGRESS_EVERY_S = 0.5
PR_SET_PDEATHSIG = 1
#: The counters of a shard a child reports while it runs (what `ShardProgress.of` reads).
PROGRESS_FIELDS = ("key", "node", "items", "ok", "failed", "resumed", "check_failed", "total", "started")


def process_count(items: int, groups: int, cpus: int | None = None, wanted: int | None = None) -> int:
    """How many processes a run of `items` over `groups` node groups uses: `wanted` (the task's
    `processes:`) or one per core, never more than the node groups, and only when each process
    gets at least `MIN_ITEMS_PER_PROCESS` items (unless asked for explicitly)."""
    if wanted is not None:
        return max(1, min(wanted, groups))
    cores = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(cores, groups, items // MIN_ITEMS_PER_PROCESS))


def group_by_node(shard_keys: Sequence[str], home_of: Callable[[str], str], count: int) -> list[list[str]]:
    """`count` groups of shards, each holding whole nodes (all shards homed on a node go to one
    process), balanced by their number of shards."""
    by_node: dict[str, list[str]] = {}
    for key in shard_keys:
        by_node.setdefault(home_of(key), []).append(key)
    groups: list[list[str]] = [[] for _ in range(max(1, min(count, len(by_node))))]
    for _node, keys in sorted(by_node.items(), key=lambda pair: (-len(pair[1]), pair[0])):
        min(groups, key=len).extend(keys)
    return [group for group in groups if group]


class PipeLog:
    """The child's log: each line goes to the parent, which writes it to the run's log."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send

    def _line(self, level: str, message: object) -> None:
        self._send(("log", level, str(message)))

    def debug(self, message: object) -> None:
        self._line("debug", message)

    def info(self, message: object) -> None:
        self._line("info", message)

    def warning(self, message: object) -> None:
        self._line("warning", message)

    def error(self, message: object) -> None:
        self._line("error", message)

    def exception(self, message: object) -> None:
        """An error with the traceback being handled, as `logging.Logger.exception`."""
        self._line("error", f"{message}\n{traceback.format_exc()}")


def snapshot(summary: Any) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in PROGRESS_FIELDS}


def run_in_processes(
    groups: Sequence[list[str]],
    stream: Callable[[list[str]], list[Any]],
    prepare_child: Callable[[Callable[[tuple[Any, ...]], None]], ProgressBoard],
    log: logging.Logger | Any,
    parent_board: ProgressBoard | None,
    new_summary: Callable[[str], Any],
) -> list[Any]:
    """Stream `groups[0]` here and every other group in a forked child; the summaries of all
    shards, in the order of the groups. `stream(keys)` runs a group's shards to the end (its own
    event loop and connections); `prepare_child(send)` sets the runner up for a child (its log
    and progress go to `send`) and returns the child's progress board."""
    context = multiprocessing.get_context("fork")
    children: list[tuple[list[str], Any, Connection]] = []
    for keys in groups[1:]:
        receive, send_end = context.Pipe(duplex=False)
        sys.stdout.flush()  # buffered output would be written twice, by the parent and the child
        sys.stderr.flush()
        process = context.Process(target=_child, args=(keys, stream, prepare_child, send_end), daemon=True, name=f"batch-shards-{keys[0]}")
        process.start()
        send_end.close()
        children.append((keys, process, receive))
        log.info(f"shards {', '.join(keys)}: in process {process.pid}")
    log.info(f"shards {', '.join(groups[0])}: in process {os.getpid()} (the run's)")
    results: dict[int, list[Any] | str] = {}  # a child's summaries, or why it failed
    readers = [
        threading.Thread(target=_read_child, args=(index, keys, receive, log, parent_board, new_summary, results), daemon=True, name=f"batch-shards-reader-{index}")
        for index, (keys, _process, receive) in enumerate(children)
    ]
    for reader in readers:
        reader.start()
    try:
        own = stream(list(groups[0]))
    except BaseException:
        for _keys, process, _receive in children:  # the run failed or was cancelled: so do they
            process.terminate()
        raise
    finally:
        for reader in readers:
            reader.join()
        for _keys, process, receive in children:
            process.join(timeout=30)
            receive.close()
    summaries = list(own)
    for index, (keys, process, _receive) in enumerate(children):
        outcome = results.get(index)
        if isinstance(outcome, list):
            summaries.extend(outcome)
            continue
        why = outcome if outcome is not None else f"the shards' process ended with exit code {process.exitcode}"
        for key in keys:
            summary = new_summary(key)
            summary.error = why
            summaries.append(summary)
    return summaries


def _child(keys: list[str], stream: Callable[[list[str]], list[Any]], prepare_child: Callable, send_end: Connection) -> None:
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            send_end.send(message)

    code = 0
    try:
        _end_with_the_parent()
        board = prepare_child(send)
        done = threading.Event()

        def report() -> None:
            while not done.wait(PROGRESS_EVERY_S):
                send(("progress", [snapshot(s) for s in board.shards()]))

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            summaries = stream(keys)
        finally:
            done.set()
            reporter.join()
        send(("done", summaries))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the shards
        code = 1
        try:
            send(("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()[-3000:]))
        except Exception:  # noqa: BLE001 - the parent sees the exit code instead
            pass
    finally:
        send_end.close()
        os._exit(code)  # nothing of the parent's (atexit, Dagster, database pools) runs here


def _end_with_the_parent() -> None:
    """Linux: SIGTERM this child when the run's process dies (a SIGKILLed run leaves no shards
    going on without it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the run's process ends its children itself
        pass


def _read_child(
    index: int,
    keys: list[str],
    receive: Connection,
    log: logging.Logger | Any,
    board: ProgressBoard | None,
    new_summary: Callable[[str], Any],
    results: dict[int, list[Any] | str],
) -> None:
    """The parent's side of one child: progress into proxy summaries on the run's board, log
    lines into the run's log, and the child's summaries (or its failure) into `results`."""
    proxies: dict[str, Any] = {}
    while True:
        try:
            message = receive.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "progress" and board is not None:
            for fields in message[1]:
                proxy = proxies.get(fields["key"])
                if proxy is None:
                    proxy = proxies[fields["key"]] = new_summary(fields["key"])
                    board.add(proxy)
                for name in PROGRESS_FIELDS:
                    setattr(proxy, name, fields[name])
        elif kind == "log":
            getattr(log, message[1], log.info)(message[2])
        elif kind == "done":
            results[index] = message[1]
            if board is not None:
                for summary in message[1]:
                    board.add(summary)
            return
        elif kind == "failed":
            log.error(f"the process of shards {', '.join(keys)} failed: {message[1]}\n{message[2]}")
            results[index] = message[1]
            return
