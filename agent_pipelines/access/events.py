"""The ingress side of the policy: a source may only start the tasks it is granted
(`sources:` in the policy), and event deliveries leave a trace in the audit log.

An event is refused (403) when any task it would start is not granted to its source: the
sender learns which, the admin finds a `denied` entry, and nothing is stored, so the scheduler
never sees it. Accepted deliveries are audited in batches, one `event.trigger` entry per source
every `batch_interval_s` with the count and the range of event sequence numbers: each event is
already stored durably with its id, source and time in `agent_pipelines_events`, and an audit
append costs ~5.6 ms median and ~18 ms p99 on SQLite (a serialized hash-chain write), which
would double the ingress's own store write on every event. Denials are audited one by one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_pipelines.access.policy import Policy
from agent_pipelines.audit import Actor, audit
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.scheduling.subscriptions import field_at

logger = logging.getLogger(__name__)

BATCH_INTERVAL_S = 10.0


def _matches(task: TaskSpec, source: str, kind: str, payload: Mapping[str, Any]) -> bool:
    """`scheduling.subscriptions.subscription_matches`, on the parts the ingress has."""
    for subscription in task.events:
        if subscription.source != source:
            continue
        types = subscription.types()
        if "*" not in types and kind not in types:
            continue
        if all(
            (field_at(payload, path) in expected) if isinstance(expected, list) else field_at(payload, path) == expected
            for path, expected in subscription.match.items()
        ):
            return True
    return False


@dataclass
class _Batch:
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    clients: set[str] = field(default_factory=set)
    since: float = 0.0


class EventAccess:
    """Called by the ingress: `denied_tasks` inline (CPU only), `refuse` in a worker thread,
    `accepted` inline (a counter), and a background thread that writes the batches."""

    def __init__(
        self,
        store: Any,
        policy: Callable[[], Policy | None],
        subscribed: Callable[[str], Sequence[TaskSpec]],
        *,
        batch_interval_s: float = BATCH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.subscribed = subscribed
        self.batch_interval_s = batch_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the check ----------------------------------------------------------------------

    def denied_tasks(self, source: str, kind: str, payload: Mapping[str, Any]) -> list[str]:
        """Tasks this event would start that its source is not granted (none without a policy)."""
        policy = self.policy()
        if policy is None:
            return []
        return sorted(
            task.name
            for task in self.subscribed(source)
            if task.enabled and _matches(task, source, kind, payload) and not policy.source_may_trigger(source, task.name, task.owner)
        )

    def refuse(self, source: str, kind: str, denied: list[str], client: str) -> str:
        """Audit the denial; returns the message for the sender."""
        policy = self.policy()
        where = f"policy {policy.path}" if policy is not None and policy.path else "the access policy"
        message = (
            f"source {source!r} may not trigger task(s) {', '.join(denied)}: {where} does not grant them to it "
            f"(`sources: {{{source}: {{tasks: [...]}}}}`); the event was not stored"
        )
        try:
            audit(
                self.store, Actor(f"source:{source}", "ingress", client), "event.trigger", ", ".join(denied)[:500],
                outcome="denied", reason=message, event_type=kind, source=source,
            )
        except Exception:  # the event is refused all the same; nothing happened unrecorded
            logger.exception("could not audit a denied event of source %r", source)
        return message

    # --- accepted deliveries ------------------------------------------------------------

    def accepted(self, source: str, seq: int, client: str) -> None:
        with self._lock:
            batch = self._batches.get(source)
            if batch is None:
                batch = self._batches[source] = _Batch(since=self._clock())
            batch.events += 1
            batch.first_seq = seq if batch.first_seq is None else min(batch.first_seq, seq)
            batch.last_seq = seq if batch.last_seq is None else max(batch.last_seq, seq)
            if len(batch.clients) < 20:
                batch.clients.add(client)

    def flush(self) -> int:
        """Write one `event.trigger` entry per source with deliveries since the last flush."""
        with self._lock:
            batches, self._batches = self._batches, {}
        now = self._clock()
        for source, batch in sorted(batches.items()):
            try:
                audit(
                    self.store, Actor(f"source:{source}", "ingress", ", ".join(sorted(batch.clients))[:255]),
                    "event.trigger", source,
                    events=batch.events, first_seq=batch.first_seq, last_seq=batch.last_seq,
                    window_s=round(now - batch.since, 3), note="accepted deliveries, stored in agent_pipelines_events",
                )
            except Exception:
                logger.exception("could not audit %d accepted event(s) of source %r; retrying at the next flush", batch.events, source)
                with self._lock:
                    self._merge_back(source, batch)
        return len(batches)

    def _merge_back(self, source: str, batch: _Batch) -> None:
        current = self._batches.get(source)
        if current is None:
            self._batches[source] = batch
            return
        current.events += batch.events
        current.first_seq = min(s for s in (current.first_seq, batch.first_seq) if s is not None)
        current.since = min(current.since, batch.since)
        current.clients |= batch.clients

    def start(self) -> EventAccess:
        def loop() -> None:
            while not self._stop.wait(self.batch_interval_s):
                self.flush()

        self._thread = threading.Thread(target=loop, name="ingress-audit", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
