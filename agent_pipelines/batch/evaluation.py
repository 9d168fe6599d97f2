"""Checks on every item of a batch, and the prompt version each item goes out with.

An item's version is chosen as a regular execution's is, from its idempotency key (see
`prompts.canary`): a candidate's canary share is a share of items, and every attempt of an item
(and a re-run of the same execution) sends the same prompt. Every answered item is checked (the
local checks, then the judge when configured, bounded by the judge agent's `max_concurrency`).
The outcome goes into the item's result row and into tallies per prompt version, which become
one history record per run and version (`history_rows`): a million items add a few rows, not a
million, to what the tuner reads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import AgentSpecBase, ChecksSpec, TaskSpec
from agent_pipelines.prompts.canary import PromptChooser, in_canary
from agent_pipelines.prompts.checks import Judged, judge_verdict, local_checks
from agent_pipelines.prompts.effective import with_version
from agent_pipelines.prompts.registry import PromptRegistry

#: Failing items kept per prompt version (for the tuner) and per check (for the asset check).
SAMPLES = 5
#: Characters of a failing output kept with its sample.
OUTPUT_EXCERPT = 600


@dataclass(frozen=True)
class PromptChoice:
    """The task as one prompt version makes it, that version, and whether it is the canary."""

    task: TaskSpec
    version: str | None
    canary: bool = False


@dataclass
class VersionTally:
    """What the checked items of one prompt version did: the tuner's evidence for it."""

    version: str
    canary: bool
    items: int = 0
    passed: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # check -> items that failed it
    samples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: str, item_id: str, failures: Mapping[str, str], output: str | None) -> None:
        self.items += 1
        if not failures:
            self.passed += 1
            return
        for name in failures:
            self.failed[name] = self.failed.get(name, 0) + 1
        if len(self.samples) < SAMPLES:
            self.samples.append({"key": key, "item_id": item_id, "failed": dict(failures), "output": (output or "")[:OUTPUT_EXCERPT]})

    def merge(self, other: VersionTally) -> None:
        self.items += other.items
        self.passed += other.passed
        for name, count in other.failed.items():
            self.failed[name] = self.failed.get(name, 0) + count
        self.samples = (self.samples + other.samples)[:SAMPLES]

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.items if self.items else None


class ItemEvaluation:
    """Per item of one run: the prompt version it is sent with, and the checks of its answer.

    The registry is read once, when the run starts: a promotion applies from the next run on.
    """

    def __init__(
        self,
        task: TaskSpec,
        *,
        version: str,
        chooser: PromptChooser | None = None,
        judge_agent: AgentSpecBase | None = None,
        pool_factory: Callable[[Mapping[str, AgentSpecBase]], AgentPool] = AgentPool,
    ) -> None:
        self.task = task
        self.checks: ChecksSpec | None = task.checks
        self.judge_agent = judge_agent
        self.pool_factory = pool_factory
        self._pool: AgentPool | None = None
        self._users = 0
        if chooser is None:
            self.active = PromptChoice(task, version)
            self.candidate: PromptChoice | None = None
            return
        spec, active_version = chooser.active(task)
        self.active = PromptChoice(spec, active_version)
        found = chooser.candidates.get(task.name)
        self.candidate = PromptChoice(with_version(task, found), found.version, True) if found is not None and task.tuning else None

    @classmethod
    def for_run(
        cls,
        catalog: Catalog,
        task: TaskSpec,
        registry: PromptRegistry | None,
        pool_factory: Callable[[Mapping[str, AgentSpecBase]], AgentPool] = AgentPool,
    ) -> ItemEvaluation:
        judge = task.checks.judge if task.checks is not None else None
        return cls(
            task,
            version=catalog.prompt_versions[task.name],
            chooser=PromptChooser(catalog, registry, [task.name]) if registry is not None else None,
            judge_agent=catalog.agents[judge.agent] if judge is not None else None,
            pool_factory=pool_factory,
        )

    def choose(self, key: str) -> PromptChoice:
        """The same answer as `PromptChooser.choose`, without copying the task per item."""
        if self.candidate is not None and self.task.tuning is not None and in_canary(key, self.task.tuning.canary_share):
            return self.candidate
        return self.active

    async def failures(self, key: str, prompt: str, output: str, latency_ms: float, tokens: int | None) -> dict[str, str]:
        """The checks an answer failed (name -> why); empty when it passed them all."""
        assert self.checks is not None
        judged = Judged(key, prompt, output, latency_ms, tokens)
        outcomes = local_checks(self.checks, judged)
        judge = self.checks.judge
        if judge is not None and self.judge_agent is not None:
            if self._pool is None:
                self._pool = self.pool_factory({self.judge_agent.name: self.judge_agent})
            outcomes.append(await judge_verdict(judge, self._pool, self.judge_agent.timeout, judged))
        return {outcome.name: outcome.details for outcome in outcomes if not outcome.passed}

    @contextlib.asynccontextmanager
    async def in_use(self) -> AsyncIterator[None]:
        """Held by each shard while it streams: the last one out closes the judge's connections,
        on the loop that opened them (a shard starting later opens them again)."""
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._pool is not None:
                pool, self._pool = self._pool, None
                await pool.aclose()


def result_columns(failures: Mapping[str, str] | None) -> dict[str, Any]:
    """An item's checks in its result row; None: not checked (no answer, or no checks)."""
    if failures is None:
        return {"checks_passed": None, "check_failures": None}
    return {"checks_passed": not failures, "check_failures": json.dumps(dict(failures), ensure_ascii=False) if failures else None}


def stored_failures(checks: ChecksSpec, row: Mapping[str, Any]) -> dict[str, str] | None:
    """The checks a stored result fails under today's `checks`: the local ones evaluated again
    on its output, the judge's verdict as recorded when the item ran. None: no answer to check."""
    if row.get("status") != "ok" or row.get("output") is None:
        return None
    tokens = (row.get("tokens_in") or 0) + (row.get("tokens_out") or 0)
    judged = Judged(str(row.get("item_id")), "", row["output"], float(row.get("latency_ms") or 0.0), tokens)
    failures = {o.name: o.details for o in local_checks(checks, judged) if not o.passed}
    if checks.judge is not None:
        recorded = json.loads(row.get("check_failures") or "{}")
        if "judge" in recorded:
            failures["judge"] = recorded["judge"]
        elif row.get("checks_passed") is None:
            failures["judge"] = "no verdict recorded: the item ran before the judge was configured"
    return failures


def history_rows(task: str, run_id: str, tallies: Iterable[VersionTally], checks: Sequence[str]) -> list[dict[str, Any]]:
    """One history record per prompt version of a run, over all its shards."""
    merged: dict[str, VersionTally] = {}
    for tally in tallies:
        merged.setdefault(tally.version, VersionTally(tally.version, tally.canary)).merge(tally)
    return [
        {
            "task": task,
            "version": tally.version,
            "run_id": run_id,
            "canary": tally.canary,
            "checked": tally.items,
            "passed": tally.passed,
            "failed_checks": {name: tally.failed.get(name, 0) for name in checks},
            "samples": tally.samples,
        }
        for tally in merged.values()
        if tally.items
    ]
