"""A second code location with the plain-Dagster way of doing what agent_pipelines does, run by
the same daemon in the same benchmark so the ratio is measured under the same load:

- `baseline_schedule`: a minute cron schedule whose run sends one agent request;
- `burst_<i>` schedules: N schedules due in the same minute, each a run with one request;
- `baseline_event_sensor`: a sensor that turns each stored event into a run (run key = event id).

Each request carries `Idempotency-Key: baseline:<kind>:<due time or event id>` so lateness is
measured exactly as for agent_pipelines: the demo agent's receive time minus the due time.
"""

import os

import dagster as dg
import httpx

from agent_pipelines.store import StateStore

AGENT_URL = os.environ.get("BASELINE_AGENT_URL", "http://127.0.0.1:8765")
BURST = int(os.environ.get("BASELINE_BURST_COUNT", "0"))
BURST_CRON = os.environ.get("BASELINE_BURST_CRON", "0 0 1 1 *")
EVENTS = os.environ.get("BASELINE_EVENTS") == "1"


def _send(key: str) -> None:
    httpx.post(
        f"{AGENT_URL}/v1/chat/completions",
        json={"model": "demo-model", "messages": [{"role": "user", "content": key}]},
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {os.environ.get('DEMO_AGENT_TOKEN', '')}"},
        timeout=30,
    ).raise_for_status()


@dg.op
def send_for_schedule(context: dg.OpExecutionContext) -> None:
    due = context.run.tags.get(".dagster/scheduled_execution_time", "")
    kind = context.run.tags.get("baseline/kind", "schedule")
    # Milliseconds and Z, as agent_pipelines' keys, so one parser reads both.
    _send(f"baseline:{kind}:{due.replace('+00:00', '.000Z')}")


@dg.op
def send_for_event(context: dg.OpExecutionContext) -> None:
    _send(f"baseline:event:{context.run.tags['baseline/event_id']}")


@dg.job(executor_def=dg.in_process_executor)
def baseline_job() -> None:
    send_for_schedule()


@dg.job(executor_def=dg.in_process_executor)
def baseline_event_job() -> None:
    send_for_event()


schedules = [
    dg.ScheduleDefinition(
        name="baseline_schedule",
        cron_schedule="* * * * *",
        job=baseline_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={"baseline/kind": "schedule"},
    )
]
schedules += [
    dg.ScheduleDefinition(
        name=f"burst_{i}",
        cron_schedule=BURST_CRON,
        job=baseline_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={"baseline/kind": f"burst{i}"},
    )
    for i in range(BURST)
]


@dg.sensor(job=baseline_event_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def baseline_event_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    store = StateStore.for_instance(context.instance)
    seq = int(context.cursor or 0)
    requests = []
    for event in store.events_after(seq, limit=500):
        seq = event.seq
        if event.source == "baseline":
            requests.append(dg.RunRequest(run_key=event.event_id, tags={"baseline/event_id": event.event_id}))
    return dg.SensorResult(run_requests=requests, cursor=str(seq))


defs = dg.Definitions(
    jobs=[baseline_job, baseline_event_job],
    schedules=schedules,
    sensors=[baseline_event_sensor] if EVENTS else [],
)
