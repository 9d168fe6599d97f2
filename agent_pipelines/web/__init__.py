"""The platform's own pages beside the Dagster UI (execution records, audit log), served under
`/ops/` by the gate in front of the Dagster webserver."""

from __future__ import annotations

from starlette.routing import BaseRoute


def ops_routes() -> list[BaseRoute]:
    """Every `/ops/...` route; each page module contributes its own."""
    from agent_pipelines.web.audit_page import routes as audit_routes
    from agent_pipelines.web.records_page import routes as records_routes

    return [*audit_routes(), *records_routes()]
