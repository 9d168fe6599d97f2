"""`prompt_quality_sensor`: runs the tuning loop for a task as soon as it needs deciding.

A task needs deciding when its active version's pass rate over the tuning window falls below
its threshold, or when its candidate has enough evaluated executions. The run key is the task
and its newest evaluation, so a task is looked at once per new evidence, not once per tick.
"""


import dagster as dg
import sqlalchemy as sa

from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.registry import PromptRegistry
from agent_pipelines.prompts.tuning import TUNING_JOB, evaluated, latest, pass_rate
from agent_pipelines.store import schema
from resources.store import StoreResource

SENSOR_NAME = "prompt_quality_sensor"


def tuning_requests(catalog: Catalog, registry: PromptRegistry) -> list[dg.RunRequest]:
    requests = []
    table = schema.evaluations
    tuned = [name for name, task in catalog.tasks.items() if task.tuning is not None]
    chooser = PromptChooser(catalog, registry, tuned)
    for name, task in catalog.tasks.items():
        tuning = task.tuning
        if tuning is None:
            continue
        history = schema.batch_evaluations if task.is_batch else table
        with registry.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(history.c.id)).where(history.c.task == name)).scalar()
        if newest is None:
            continue
        stats = registry.executions_by_version(name, limit=max(tuning.window, tuning.min_runs) * 10)
        candidate = registry.candidate(name)
        active_runs = latest(stats.get(chooser.version_of(name), []), tuning.window)
        rate = pass_rate(active_runs)
        needs = (candidate is not None and evaluated(stats.get(candidate.version, [])) >= tuning.min_runs) or (
            candidate is None and rate is not None and evaluated(active_runs) >= min(tuning.min_runs, tuning.window) and rate < tuning.min_pass_rate
        )
        if needs:
            requests.append(
                dg.RunRequest(
                    run_key=f"tune:{name}:{newest}",
                    run_config={"ops": {"prompt_tuning": {"config": {"tasks": [name]}}}},
                    tags={"agent_pipelines/task": name, "agent_pipelines/trigger": "quality"},
                )
            )
    return requests


def build_prompt_quality_sensor(catalog: Catalog) -> dg.SensorDefinition | None:
    if not any(t.tuning is not None for t in catalog.tasks.values()):
        return None

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=TUNING_JOB,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts prompt tuning for a task whose pass rate fell below its threshold, or whose candidate has enough runs.",
    )
    def prompt_quality_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        registry = PromptRegistry(store.for_instance(context.instance))
        return dg.SensorResult(run_requests=tuning_requests(catalog, registry))

    return prompt_quality_sensor
