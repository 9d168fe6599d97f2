"""Notifications: events found in the store, routed by the catalog, folded per rate window into a
durable outbox, delivered with apprise.

    detection ──► routing ──► outbox (dedup, rate window) ──► delivery (apprise, retries)
        ▲                                                         │
    the store (executions, evaluations, agent health, costs)   render

`service.NotificationService.tick` runs them once; the `notification_sensor` calls it on a
cursor, outside every run, so a slow or failing channel never delays or fails a run.
"""
