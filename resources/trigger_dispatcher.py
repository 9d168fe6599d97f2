"""The run-scoped trigger dispatcher as a Dagster resource (see `agent_pipelines.dispatcher`).

A resource because the in-process executor initialises resources once, when the run starts and
before any step: exactly when a window run must begin waiting for its first due time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from agent_pipelines import tags
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.dispatcher import Dispatcher
from agent_pipelines.execution import TaskRunner
from agent_pipelines.heartbeat import RunHeartbeat
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.store import StateStore
from agent_pipelines.timing import parse_due
from resources.agent_resource import AgentResource

TRIGGER_DISPATCHER_KEY = "trigger_dispatcher"


def build_trigger_dispatcher(catalog: Catalog) -> dg.ResourceDefinition:
    @dg.resource(description="Fires a window run's executions at their due times and its events as they arrive.")
    @contextmanager
    def trigger_dispatcher(init_context: dg.InitResourceContext) -> Iterator[Dispatcher]:
        run = init_context.run
        assert run is not None and init_context.instance is not None
        run_tags = run.tags
        window = None
        if tags.WINDOW_START in run_tags and tags.WINDOW_END in run_tags:
            window = (parse_due(run_tags[tags.WINDOW_START]), parse_due(run_tags[tags.WINDOW_END]))
        store = StateStore.for_instance(init_context.instance)
        runner = TaskRunner(
            catalog=catalog,
            store=store,
            instance=init_context.instance,
            run_id=run.run_id,
            agents={name: AgentResource.from_spec(spec) for name, spec in catalog.agents.items()},
            log=init_context.log,
        )
        selected = {key.to_user_string() for key in (run.asset_selection or ())}
        runner.choose_prompt = PromptChooser(catalog, PromptRegistry(store), selected).choose
        dispatcher = Dispatcher(
            runner,
            window=window,
            selected=[t for name, t in catalog.tasks.items() if name in selected],
            paused=store.paused_tasks() if window else set(),
            listen_for_events=window is not None,
        )
        with RunHeartbeat(store, run.run_id, init_context.log):
            dispatcher.start()
            try:
                yield dispatcher
            finally:
                dispatcher.stop()

    return trigger_dispatcher
