"""Access to agent_pipelines' own tables, wherever the Dagster instance keeps its storage.

One `StateStore` per database URL per process; its methods are grouped by the tables they
touch (executions, events, conversations, agent health and load, tasks, heartbeats, leadership, agent lifecycle, audit).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from agent_pipelines.store.agent_health import AgentHealthRecords
from agent_pipelines.store.agent_load import AgentLoadRecords
from agent_pipelines.store.audit import AuditRecords
from agent_pipelines.store.base import create_engine, url_for_instance
from agent_pipelines.store.catalog_items import CatalogItemRecords
from agent_pipelines.store.conversations import Conversations
from agent_pipelines.store.events import EventLog
from agent_pipelines.store.executions import ExecutionRecords
from agent_pipelines.store.heartbeats import RunHeartbeats
from agent_pipelines.store.leadership import LeadershipRecords
from agent_pipelines.store.lifecycle import LifecycleRecords
from agent_pipelines.store.migrate import ensure_migrated
from agent_pipelines.store.notifications import NotificationRecords
from agent_pipelines.store.records import ExecutionSearch
from agent_pipelines.store.tasks import TaskRecords

if TYPE_CHECKING:
    from dagster import DagsterInstance


class StateStore(ExecutionRecords, EventLog, Conversations, AgentHealthRecords, AgentLoadRecords, TaskRecords, RunHeartbeats, LeadershipRecords, LifecycleRecords, AuditRecords, CatalogItemRecords, ExecutionSearch, NotificationRecords):
    _instances: dict[str, StateStore] = {}
    _lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        ensure_migrated(self.engine)

    @classmethod
    def for_url(cls, url: str) -> StateStore:
        with cls._lock:
            if url not in cls._instances:
                cls._instances[url] = cls(url)
            return cls._instances[url]

    @classmethod
    def for_instance(cls, instance: DagsterInstance) -> StateStore:
        return cls.for_url(url_for_instance(instance))
