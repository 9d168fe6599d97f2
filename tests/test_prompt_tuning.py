"""The prompt loop end to end with real servers on 127.0.0.1: a demo agent that answers JSON only
when the prompt asks for JSON, and a demo tuner that proposes exactly that edit. The pass rate
starts at 0, a candidate is proposed, canaried, promoted, and the pass rate reaches 100 %; the
registry keeps the whole history with lineage to the failing runs; rollback restores the old
version. Plus the safety cases."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.prompts.canary import PromptChooser
from agent_pipelines.prompts.registry import PromptRegistry, RegistryError
from agent_pipelines.prompts.tuning import Tuner, pass_rate
from agent_pipelines.store import StateStore
from assets.prompts import history_frame
from tests.conftest import write_catalog

TASK = """\
tasks:
  - name: standup
    owner: eng
    agent: demo
    prompt: "Summarise the stand-up of {{ team }}."
    variables: {team: platform}
    checks:
      json_schema: {type: object, required: [summary]}
      must_not_match: ["(?i)as an ai"]
      judge: {agent: judge, rubric: "Is the answer structured?", pass_threshold: 0.5}
      must_pass: [json_schema]
    tuning:
      tuner: tuner
      min_pass_rate: 0.9
      window: 4
      canary_share: 0.5
      min_runs: 3
      margin: 0.3
      approval: {approval}
      max_proposals_per_day: 2
"""

EXTRA_AGENTS = """\
- {name: tuner, kind: openai_chat, model: tuner-model, base_url: "URL", auth_env: DEMO_AGENT_TOKEN}
- {name: judge, kind: openai_chat, model: judge-model, base_url: "URL", auth_env: DEMO_AGENT_TOKEN}
"""


class Loop:
    """The platform as the code location loads it (the catalog only); registry versions apply
    when each run starts."""

    def __init__(self, tmp_path: Path, demo_agent, instance: dg.DagsterInstance, approval: str = "auto") -> None:
        self.path = write_catalog(
            tmp_path / "catalog", demo_agent.url, TASK.replace("{approval}", approval), EXTRA_AGENTS.replace("URL", demo_agent.url)
        )
        self.instance = instance
        self.registry = PromptRegistry(StateStore.for_instance(instance))
        self.reload()
        self.registry.sync_catalog(self.catalog)

    def reload(self) -> None:
        """What a code location reload does (only needed after a catalog edit)."""
        self.catalog = load_catalog(self.path)
        self.defs = build_definitions(self.catalog)

    def running_version(self) -> str:
        """The version a run starting now uses for non-canary executions."""
        return PromptChooser(self.catalog, self.registry, ["standup"]).version_of("standup")

    def last_prompt(self, demo_agent) -> str:
        """The task's last prompt (the judge's and the tuner's requests go to other models)."""
        task_requests = [r for r in demo_agent.requests() if r.body.get("model") == "demo-model"]
        return task_requests[-1].body["messages"][-1]["content"]

    def run_task(self) -> dg.AssetMaterialization:
        result = self.defs.resolve_job_def("agent_tasks_job").execute_in_process(
            instance=self.instance, asset_selection=[dg.AssetKey("standup")]
        )
        assert result.success
        (event,) = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
        return event.event_specific_data.materialization

    def tune(self):  # noqa: ANN201
        result = self.defs.resolve_job_def("prompt_tuning_job").execute_in_process(instance=self.instance)
        assert result.success
        record = self.instance.fetch_materializations(dg.AssetKey("prompt_tuning"), limit=1).records[0]
        return record.asset_materialization.metadata

    def active_pass_rate(self) -> float | None:
        stats = self.registry.executions_by_version("standup", limit=100)
        return pass_rate(stats.get(self.running_version(), [])[:4])


def test_the_loop_takes_a_failing_prompt_to_a_passing_one(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    v1 = loop.catalog.prompt_versions["standup"]
    for _ in range(4):
        materialization = loop.run_task()
    assert loop.active_pass_rate() == 0.0
    check_events = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey("standup"), "json_schema"))
    assert check_events is not None and check_events.event.asset_check_evaluation.passed is False
    assert materialization.metadata["prompt_version"].value == v1

    decisions = loop.tune()
    assert decisions["proposed"].value == ["standup"]
    candidate = loop.registry.candidate("standup")
    assert candidate is not None and candidate.parent_version == v1 and candidate.reason == "tuner"
    assert "Answer in JSON" in candidate.prompt
    failing = candidate.motivation["failing_executions"]
    assert len(failing) == 4 and candidate.motivation["failing_runs"], "lineage to the failing runs"

    # Canary: about half of the executions try the candidate; its outputs say so.
    canaries = []
    for _ in range(30):
        materialization = loop.run_task()
        if materialization.metadata.get("canary"):
            canaries.append(materialization)
            assert materialization.metadata["prompt_version"].value == candidate.version
            assert materialization.tags["agent_pipelines/prompt_version"] == candidate.version
            assert materialization.tags["dagster/code_version"] == v1, "a canary is not a stale output"
        if len(canaries) >= 3:
            break
    assert len(canaries) >= 3

    decisions = loop.tune()
    assert decisions["promoted"].value == ["standup"]
    assert loop.registry.active("standup").version == candidate.version
    trail = loop.registry.store.audit_entries(target="standup")
    assert [(e.action, e.actor) for e in reversed(trail)] == [("prompt.proposed", "system:tuner"), ("prompt.promoted", "system:tuner")]
    assert trail[0].details["version"] == candidate.version

    # No reload: the next run starts with the promoted version and says so in its records.
    assert loop.running_version() == candidate.version
    for _ in range(4):
        materialization = loop.run_task()
        assert materialization.metadata["prompt_version"].value == candidate.version
        assert materialization.tags["dagster/code_version"] == v1, "the definition's version: never stale"
    assert "Answer in JSON" in loop.last_prompt(demo_agent)
    assert loop.active_pass_rate() == 1.0

    history = history_frame(loop.catalog, loop.registry.store).set_index("version")
    assert history.loc[v1, "pass_rate"] == 0.0 and history.loc[candidate.version, "pass_rate"] == 1.0
    assert history.loc[candidate.version, "pass_rate_json_schema"] == 1.0
    actions = [(e.action, e.version) for e in loop.registry.events("standup")]
    assert ("register", candidate.version) in actions and ("promote", candidate.version) in actions

    rolled_back = loop.registry.rollback("standup")
    assert rolled_back.version == v1 and loop.registry.get("standup", candidate.version).status == "retired"
    assert loop.running_version() == v1
    loop.run_task()
    assert "Answer in JSON" not in loop.last_prompt(demo_agent)
    assert ("rollback", v1) in [(e.action, e.version) for e in loop.registry.events("standup")]


def test_a_candidate_failing_a_must_pass_check_is_never_promoted(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    for _ in range(4):
        loop.run_task()
    base = loop.catalog.base_versions["standup"]
    bad = loop.registry.register(
        "standup", version="bad-1", prompt="Summarise {{ team }} in prose.", system=None,
        parameters={}, reason="manual", base_version=base, parent_version=base, status="candidate",
    )
    for _ in range(40):
        loop.run_task()
        if len(loop.registry.executions_by_version("standup", 100).get(bad.version, [])) >= 3:
            break
    decision = Tuner(loop.catalog, loop.registry).tune("standup")
    assert decision.action == "rejected" and "must-pass" in decision.details["reason"]
    assert loop.registry.get("standup", bad.version).status == "retired"
    assert loop.registry.active("standup").version == base


def test_proposals_are_bounded_per_day(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    for _ in range(4):
        loop.run_task()
    tuner = Tuner(loop.catalog, loop.registry)
    assert tuner.tune("standup").action == "proposed"
    loop.registry.reject("standup", loop.registry.candidate("standup").version, reason="test")
    second = tuner.tune("standup")
    assert second.action in ("proposed", "skipped")  # the same edit exists already: skipped
    for version in [v.version for v in loop.registry.versions("standup") if v.status == "candidate"]:
        loop.registry.reject("standup", version, reason="test")
    loop.registry.register(
        "standup", version="extra", prompt="x {{ team }}", system=None, parameters={}, reason="tuner",
        base_version=loop.catalog.base_versions["standup"], status="retired",
    )
    third = tuner.tune("standup")
    assert third.action == "skipped" and "proposals in the last 24 h" in third.details["reason"]


def test_manual_approval_waits_for_a_person(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance, approval="manual")
    for _ in range(4):
        loop.run_task()
    loop.tune()
    candidate = loop.registry.candidate("standup")
    for _ in range(40):
        loop.run_task()
        if len(loop.registry.executions_by_version("standup", 100).get(candidate.version, [])) >= 3:
            break
    decisions = loop.tune()
    assert decisions["promoted"].value == []
    assert loop.registry.candidate("standup").version == candidate.version
    assert any(e.action == "awaiting_approval" for e in loop.registry.events("standup"))
    loop.registry.promote("standup", candidate.version, actor="alice")
    assert loop.registry.active("standup").version == candidate.version


def test_a_catalog_edit_wins_over_a_tuned_version(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    base = loop.catalog.base_versions["standup"]
    loop.registry.register(
        "standup", version="tuned", prompt="Tuned {{ team }}. JSON please.", system=None, parameters={},
        reason="tuner", base_version=base, parent_version=base, status="active",
    )
    loop.run_task()
    assert loop.last_prompt(demo_agent) == "Tuned platform. JSON please."
    tasks = (loop.path / "tasks.yaml").read_text().replace("Summarise the stand-up", "Recap the stand-up")
    (loop.path / "tasks.yaml").write_text(tasks)
    loop.reload()
    loop.run_task()
    assert loop.last_prompt(demo_agent).startswith("Recap the stand-up")
    assert loop.registry.sync_catalog(loop.catalog) == ["standup"]
    active = loop.registry.active("standup")
    assert active.reason == "catalog" and active.parent_version == "tuned"


def test_registry_errors_are_clear(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    with pytest.raises(RegistryError, match="no earlier active version"):
        loop.registry.rollback("standup")
    with pytest.raises(RegistryError, match="has no prompt version 'nope'"):
        loop.registry.promote("standup", "nope")


def test_checks_are_asset_checks_of_the_task(tmp_path, demo_agent, instance) -> None:
    loop = Loop(tmp_path, demo_agent, instance)
    graph = loop.defs.resolve_asset_graph()
    checks = {key.name for key in graph.asset_check_keys if key.asset_key == dg.AssetKey("standup")}
    assert checks == {"succeeded", "json_schema", "must_not_match", "judge"}
    loop.run_task()
    judge = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey("standup"), "judge"))
    evaluation = judge.event.asset_check_evaluation
    assert evaluation.passed is False and evaluation.metadata["score"].value == 0.2
    assert evaluation.metadata["prompt_version"].value == loop.catalog.prompt_versions["standup"]
