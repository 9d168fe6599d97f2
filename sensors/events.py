"""`event_trigger_sensor`: every accepted event reaches the tasks that subscribe to it.

Window runs pick fresh events up within a few tens of milliseconds; this sensor is the safety
net that makes delivery certain: events older than `EVENT_SAFETY_NET_S` whose subscribers hold
no claim yet get an event run (run key = the event id). The cursor is the last event `seq`
handled; claims keep fast path and safety net exactly once.
"""


import datetime as dt

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK
from agent_pipelines.scheduling.planning import listener_tasks
from agent_pipelines.scheduling.subscriptions import subscribers
from agent_pipelines.scheduling.triggers import Trigger
from agent_pipelines.store import StateStore
from jobs.dispatch import EVENT_JOB, EVENT_SAFETY_NET_S
from resources.store import StoreResource

SENSOR_NAME = "event_trigger_sensor"


def event_run_requests(catalog: Catalog, store: StateStore, seq: int, now: dt.datetime) -> tuple[list[dg.RunRequest], int]:
    paused = store.paused_tasks()
    tasks = [t for t in listener_tasks(catalog) if t.name not in paused]
    requests: list[dg.RunRequest] = []
    for event in store.events_after(seq, limit=500):
        if (now - event.received_at).total_seconds() < EVENT_SAFETY_NET_S:
            break
        seq = event.seq
        matched = subscribers(tasks, event)
        trigger = Trigger.for_event(event.event_id)
        held = store.statuses([trigger.idempotency_key(t.name) for t in matched])
        pending = [t.name for t in matched if trigger.idempotency_key(t.name) not in held]
        if pending:
            requests.append(
                dg.RunRequest(
                    run_key=event.event_id,
                    job_name=EVENT_JOB,
                    run_config={"ops": {"handle_events": {"config": {"event_ids": [event.event_id]}}}},
                    tags={
                        tags.EVENT_ID: event.event_id[:255],
                        tags.TRIGGER: "event",
                        tags.TASKS: tags.summary(pending),
                        **({tags.TASK: pending[0]} if len(pending) == 1 else {}),
                    },
                )
            )
    return requests, seq


def build_event_sensor(catalog: Catalog, job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the subscribers of events that no window run has picked up (run key = event id).",
    )
    def event_trigger_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        requests, seq = event_run_requests(catalog, store.for_instance(context.instance), int(context.cursor or 0), SYSTEM_CLOCK.now())
        return dg.SensorResult(run_requests=requests, cursor=str(seq))

    return event_trigger_sensor
