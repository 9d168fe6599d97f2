"""agent_pipelines' own tables beside Dagster's storage (SQLAlchemy + alembic)."""

from agent_pipelines.store.agent_health import AgentHealth
from agent_pipelines.store.agent_load import AgentLoad
from agent_pipelines.store.base import sqlalchemy_url, url_for_instance
from agent_pipelines.store.events import StoredEvent
from agent_pipelines.store.executions import Claim, Execution, ResultRecord, Settlement
from agent_pipelines.store.store import StateStore
from agent_pipelines.store.tasks import RunNowRequest, TaskState
from agent_pipelines.store import status

__all__ = [
    "AgentHealth",
    "AgentLoad",
    "Claim",
    "Execution",
    "ResultRecord",
    "RunNowRequest",
    "Settlement",
    "StateStore",
    "StoredEvent",
    "TaskState",
    "sqlalchemy_url",
    "status",
    "url_for_instance",
]
