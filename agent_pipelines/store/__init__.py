"""agent_pipelines' own tables beside Dagster's storage (SQLAlchemy + alembic)."""

from agent_pipelines.store.store import (
    Claim,
    Execution,
    RunNowRequest,
    StateStore,
    StoredEvent,
    TaskState,
    sqlalchemy_url,
    url_for_instance,
)

__all__ = [
    "Claim",
    "Execution",
    "RunNowRequest",
    "StateStore",
    "StoredEvent",
    "TaskState",
    "sqlalchemy_url",
    "url_for_instance",
]
