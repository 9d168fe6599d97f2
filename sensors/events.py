"""`event_trigger_sensor`: every accepted event reaches the tasks that subscribe to it.

Window runs pick fresh events up within a fraction of a second (see `agent_pipelines.dispatcher`);
this sensor is the safety net that makes delivery certain: events older than
`SAFETY_NET_DELAY_S` whose subscribers hold no claim yet get a run with run key = event id.
The cursor is the last event `seq` handled; claims keep fast path and safety net exactly once.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.events import subscribers
from agent_pipelines.store import StateStore
from agent_pipelines.triggers import Trigger

SENSOR_NAME = "event_trigger_sensor"
SAFETY_NET_DELAY_S = 10.0


def event_run_requests(catalog: Catalog, store: StateStore, seq: int, now: dt.datetime) -> tuple[list[dg.RunRequest], int]:
    paused = store.paused_tasks()
    tasks = [t for t in catalog.tasks.values() if t.events and t.name not in paused]
    requests: list[dg.RunRequest] = []
    for event in store.events_after(seq, limit=500):
        if (now - event.received_at).total_seconds() < SAFETY_NET_DELAY_S:
            break
        seq = event.seq
        matched = subscribers(tasks, event)
        trigger = Trigger("event", event.event_id)
        held = store.statuses([trigger.idempotency_key(t.name) for t in matched])
        pending = [t for t in matched if trigger.idempotency_key(t.name) not in held]
        if pending:
            requests.append(
                dg.RunRequest(
                    run_key=event.event_id,
                    asset_selection=[dg.AssetKey(t.name) for t in pending],
                    tags={
                        tags.EVENT_ID: event.event_id,
                        tags.TRIGGER: "event",
                        **({tags.TASK: pending[0].name} if len(pending) == 1 else {}),
                    },
                )
            )
    return requests, seq


def build_event_sensor(catalog: Catalog, job: object) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the subscribers of events that no window run has picked up (run key = event id).",
    )
    def event_trigger_sensor(context) -> dg.SensorResult:  # noqa: ANN001 - Dagster inspects the name
        store = StateStore.for_instance(context.instance)
        requests, seq = event_run_requests(
            catalog, store, int(context.cursor or 0), dt.datetime.now(dt.timezone.utc)
        )
        return dg.SensorResult(run_requests=requests, cursor=str(seq))

    return event_trigger_sensor
