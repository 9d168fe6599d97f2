"""A task's checks evaluated again on its latest recorded execution (the UI's "Execute" on a
check): `succeeded` reads the execution's state, the catalog's checks judge its stored output."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.model import TaskSpec
from agent_pipelines.prompts.checks import CheckOutcome, Judged, judge_verdict, local_checks
from agent_pipelines.scheduling import event_loop
from agent_pipelines.store import StateStore, status

SUCCEEDED_CHECK = "succeeded"


def reevaluate(
    catalog: Catalog,
    store: StateStore,
    task: TaskSpec,
    names: Sequence[str],
    pool_factory: Callable[[Mapping[str, object]], AgentPool] = AgentPool,
) -> list[CheckOutcome]:
    outcomes: list[CheckOutcome] = []
    finished = [e for e in store.executions_for_task(task.name, limit=50) if e.status in status.TERMINAL | {status.NOT_SENT}]
    if SUCCEEDED_CHECK in names:
        if not finished:
            outcomes.append(CheckOutcome(SUCCEEDED_CHECK, False, "no execution of this task has finished yet"))
        else:
            latest = finished[0]
            detail = "; ".join(part for part in (latest.error, latest.reason) if part)
            passed = latest.status == status.SUCCEEDED
            outcomes.append(
                CheckOutcome(SUCCEEDED_CHECK, passed, "The latest execution succeeded." if passed else f"{latest.status}: {detail}")
            )
    wanted = [name for name in names if name != SUCCEEDED_CHECK]
    if not wanted or task.checks is None:
        return outcomes
    success = next((e for e in finished if e.status == status.SUCCEEDED), None)
    result = store.results([success.idempotency_key]).get(success.idempotency_key) if success else None
    if success is None or result is None or result.output is None:
        return outcomes + [CheckOutcome(name, False, "no successful output to judge yet") for name in wanted]
    tokens = (result.tokens_in or 0) + (result.tokens_out or 0)
    judged = Judged(success.idempotency_key, result.prompt or "", result.output, success.latency_ms or 0.0, tokens)
    outcomes += [o for o in local_checks(task.checks, judged) if o.name in wanted]
    judge = task.checks.judge
    if "judge" in wanted and judge is not None:

        async def ask() -> CheckOutcome:
            async with pool_factory(catalog.agents) as pool:
                return await judge_verdict(judge, pool, catalog.agents[judge.agent].timeout, judged)

        outcomes.append(event_loop.run(ask()))
    return outcomes

