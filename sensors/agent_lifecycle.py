"""`agent_lifecycle_sensor`: the Dagster face of `agent_pipelines.lifecycle.controller`.

Its cursor keeps each agent's last published state: a change (made by this sensor or by a run
that woke an agent on demand) is reported to the agent's asset on the next tick.
"""

import json

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.lifecycle.controller import LifecycleController, managed_agents
from agent_pipelines.lifecycle.publication import lifecycle_events_for
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from resources.store import StoreResource

SENSOR_NAME = "agent_lifecycle_sensor"
UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def batch_agents_in_flight(catalog: Catalog, instance: dg.DagsterInstance) -> set[str]:
    """Agents of batch tasks whose shards a run is materializing (batch items are not
    executions in the store, so a busy batch is read off Dagster's runs)."""
    batch = catalog.batch_tasks
    if not batch:
        return set()
    busy = set()
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED), limit=500):
        for key in run.asset_selection or ():
            task = batch.get(key.path[-1])
            if task is not None and task.agent:
                busy.add(task.agent)
    return busy


def build_agent_lifecycle_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    managed = managed_agents(catalog)
    if not managed:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Wakes each agent with a `lifecycle:` `lead` before its next due time and lets it sleep "
            "after `idle_after` without work (never while anything is in flight)."
        ),
    )
    def agent_lifecycle_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        state_store = store.for_instance(context.instance)
        report = LifecycleController(catalog, state_store).tick(also_busy=batch_agents_in_flight(catalog, context.instance))
        for agent, why in report.woken:
            context.log.info(f"woke {agent}: {why}")
        for agent in report.ready:
            context.log.info(f"{agent} is ready")
        for agent, why in report.slept:
            context.log.info(f"{agent} sleeps: {why}")
        for agent, why in report.failed:
            context.log.warning(f"{agent}: {why}")
        published = json.loads(context.cursor) if context.cursor else {}
        states = {name: s for name, s in state_store.lifecycle_states().items() if name in managed}
        changed = {name: s for name, s in states.items() if published.get(name) != [s.state, s.since.isoformat()]}
        for event in lifecycle_events_for(state_store, changed, SYSTEM_CLOCK.now()):
            context.instance.report_runless_asset_event(event)
        cursor = json.dumps({name: [s.state, s.since.isoformat()] for name, s in states.items()}, sort_keys=True)
        return dg.SensorResult(skip_reason=f"{len(changed)} agent(s) changed state; this sensor launches no runs", cursor=cursor)

    return agent_lifecycle_sensor
