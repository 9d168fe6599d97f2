"""`notification_sensor`: failures, recoveries, lateness, failed checks, unhealthy agents and
budget overruns, told to the channels the catalog routes them to (`agent_pipelines.notifications`).

It reads the store after the fact, on its own cursor, and never launches a run: a run never
waits for a notification, and a channel that is down never fails one. The cursor is saved after
each tick; messages themselves are durable in the outbox before anything is sent.
"""

from __future__ import annotations

import dagster as dg

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.notifications.detection import DetectionCursor
from agent_pipelines.notifications.service import NotificationService
from agent_pipelines.scheduling.clock import SYSTEM_CLOCK, Clock
from resources.store import StoreResource

SENSOR_NAME = "notification_sensor"
#: Delivery stops starting new messages after this long in a tick (the daemon allows 60 s).
DELIVERY_BUDGET_S = 20.0


def build_notification_sensor(catalog: Catalog, clock: Clock = SYSTEM_CLOCK) -> dg.SensorDefinition | None:
    if not catalog.notifications.enabled:
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Tells the catalog's notification channels about failures, recoveries, lateness, failed checks, "
            "unhealthy agents and budget overruns: one message per subject per rate window, retried with back-off."
        ),
    )
    def notification_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        cursor = DetectionCursor.from_json(context.cursor)
        service = NotificationService(catalog, store.for_instance(context.instance), clock)
        report = service.tick(cursor, delivery_budget_s=DELIVERY_BUDGET_S)
        for message_id, why in report.delivery.skipped:
            context.log.warning(f"notification {message_id} skipped: {why}")
        for message_id, error in report.delivery.failed:
            context.log.warning(f"notification {message_id} failed, will retry: {error}")
        for message_id, error in report.delivery.gave_up:
            context.log.error(f"notification {message_id} given up: {error}")
        return dg.SensorResult(skip_reason=report.summary(), cursor=cursor.to_json())

    return notification_sensor


def build_notification_definitions(catalog: Catalog) -> dg.Definitions:
    sensor = build_notification_sensor(catalog)
    return dg.Definitions(sensors=[sensor] if sensor is not None else [])
