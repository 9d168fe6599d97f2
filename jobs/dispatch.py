"""The runs that carry scheduled, recovered and event-started executions.

Each is a one-step job whose step runs a dispatcher (see `agent_pipelines.scheduling`) and yields
every execution's materialization and check evaluations as soon as it is recorded. These jobs
select no assets, so no asset shows "Materializing" merely because a run that may send it
exists. A run fails only when the platform fails (the store unreachable, the dispatcher
crashing); a failing task or agent shows on its own asset (the `succeeded` check) and in its
execution record, never as a red run for the tasks beside it.

All three can also be launched by hand: with an empty config, `scheduled_tasks_job` fires what
falls due until the end of the current minute, `catchup_tasks_job` sends what is waiting for a
carrier, and `event_tasks_job` runs the subscribers of events nobody has handled. Claims keep
every execution exactly once, whoever else is running.
"""


import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.carrier import Carrier
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.dispatcher import Dispatcher, Plan
from agent_pipelines.scheduling.planning import WINDOW, window_floor
from agent_pipelines.scheduling.plans import event_plan, recovery_plan, window_plan
from agent_pipelines.scheduling.scheduler import CATCHUP_JOB, SCHEDULED_JOB
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.store import StateStore
from resources.agents import AgentsResource
from resources.store import StoreResource

EVENT_JOB = "event_tasks_job"
#: Events older than this that no run has picked up get an event run (the safety net)...
EVENT_SAFETY_NET_S = 10.0
#: ... as long as they are younger than this (a task added later does not replay old events).
EVENT_SAFETY_NET_WINDOW = dt.timedelta(minutes=15)

DagsterEvents = Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]


def carry(
    context: dg.OpExecutionContext,
    catalog: Catalog,
    store: StateStore,
    agents: AgentsResource,
    plan: Plan,
    variables_for: Callable[[str], Mapping[str, Any]] = lambda _task: {},
) -> DagsterEvents:
    """Run `plan` and yield each execution's Dagster events as it is recorded. In a manual run
    every selected check is answered; in the platform's runs a success after a success adds no
    `succeeded` evaluation (the latest one already says it)."""

    def make(publish: Callable[..., None]) -> Dispatcher:
        return Dispatcher(
            catalog=catalog,
            store=store,
            run_id=context.run_id,
            publish=publish,
            log=context.log,
            pool_factory=agents.pool,
            variables_for=variables_for,
            every_success=plan.follow == "manual",
        )

    with Carrier(store, context.run_id, context.log, make) as carrier:
        carrier.start(plan)
        for publication in carrier.publications():
            yield from publication.events
    summary = carrier.summary.text() if carrier.summary else "nothing recorded"
    context.log.info(f"executions: {summary}")
    context.instance.add_run_tags(context.run_id, {tags.EXECUTIONS: summary[:200]})


class ScheduledTasksConfig(dg.Config):
    window_start: str = Field(default="", description="ISO time; empty: when the run starts")
    window_end: str = Field(default="", description="ISO time; empty: the end of the current minute")
    tasks: list[str] = Field(default=[], description="tasks this run carries; empty: every enabled task with a schedule or events")


class CatchupTasksConfig(dg.Config):
    pass


class EventTasksConfig(dg.Config):
    event_ids: list[str] = Field(default=[], description="events to handle; empty: the recent events no run has handled")


def build_dispatch_jobs(catalog: Catalog) -> list[dg.JobDefinition]:
    @dg.op(
        name="send_scheduled_tasks",
        out={},
        description="Sends each due time of the run's tasks at its instant, and the events arriving in its window.",
    )
    def send_scheduled_tasks(
        context: dg.OpExecutionContext, config: ScheduledTasksConfig, store: StoreResource, agents: AgentsResource
    ) -> DagsterEvents:
        now = SYSTEM_CLOCK.now()
        start = parse_due(config.window_start) if config.window_start else now
        end = parse_due(config.window_end) if config.window_end else window_floor(now) + WINDOW
        state = store.for_instance(context.instance)
        plan = window_plan(catalog, state, start, end, config.tasks or None, now)
        context.log.info(f"window {start.isoformat()} - {end.isoformat()}: {len(plan.items)} due execution(s)")
        yield from carry(context, catalog, state, agents, plan)

    @dg.op(
        name="send_catchups",
        out={},
        description="Sends what waits for a carrier: missed due times the misfire policy catches up, "
        "claims a dead run never sent, retries whose run is gone.",
    )
    def send_catchups(
        context: dg.OpExecutionContext, config: CatchupTasksConfig, store: StoreResource, agents: AgentsResource
    ) -> DagsterEvents:
        state = store.for_instance(context.instance)
        plan = recovery_plan(catalog, state, SYSTEM_CLOCK.now())
        context.log.info(f"{len(plan.items)} execution(s) waiting for a carrier")
        yield from carry(context, catalog, state, agents, plan)

    @dg.op(
        name="handle_events",
        out={},
        description="Runs the subscribers of events no window run picked up (the safety net).",
    )
    def handle_events(
        context: dg.OpExecutionContext, config: EventTasksConfig, store: StoreResource, agents: AgentsResource
    ) -> DagsterEvents:
        state = store.for_instance(context.instance)
        now = SYSTEM_CLOCK.now()
        if config.event_ids:
            events = [e for e in (state.get_event(i) for i in config.event_ids) if e is not None]
        else:
            cutoff = now - dt.timedelta(seconds=EVENT_SAFETY_NET_S)
            since = state.last_event_seq_before(now - EVENT_SAFETY_NET_WINDOW)
            events = [e for e in state.events_after(since, limit=10_000) if e.received_at < cutoff]
        plan = event_plan(catalog, state, events, now)
        context.log.info(f"{len(events)} event(s), {len(plan.items)} subscriber execution(s) to claim")
        yield from carry(context, catalog, state, agents, plan)

    def job(name: str, op: dg.OpDefinition, description: str, trigger: str) -> dg.JobDefinition:
        @dg.job(name=name, description=description, tags={tags.TRIGGER: trigger})
        def _job() -> None:
            op()

        return _job

    return [
        job(
            SCHEDULED_JOB,
            send_scheduled_tasks,
            "Window runs: task_scheduler_sensor creates one per minute (75 s ahead) for the tasks due in it; "
            "its step sends each due time to the second.",
            "schedule",
        ),
        job(CATCHUP_JOB, send_catchups, "Catch-ups and recoveries, at a lower priority than live window runs.", "catchup"),
        job(EVENT_JOB, handle_events, "The safety net for events no window run picked up.", "event"),
    ]
