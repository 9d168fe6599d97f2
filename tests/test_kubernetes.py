"""What Kubernetes would receive, rendered by dagster-k8s's own code (no cluster runs here): a
catalog's `kubernetes:` blocks are checked at load with the offending path and line, window and
batch runs carry them as `dagster-k8s/config`, runs never mix pod configurations, the Job that
`K8sRunLauncher` submits for such a run fits the Kubernetes API models and holds the resources
and tolerations, and a K8s launcher with results on the pod's disk is refused."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import pytest

from agent_pipelines.catalog.loader import load_catalog
from agent_pipelines.composition import build_definitions
from agent_pipelines.kubernetes_config import K8S_CONFIG_TAG, model_problems
from agent_pipelines.scheduling.scheduler import Scheduler, SchedulerCursor
from agent_pipelines.scheduling.timing import parse_due
from agent_pipelines.store import StateStore
from tests.test_batch import _backfill, _catalog, fleet  # noqa: F401 - fixture

GPU_POD = {
    "container_config": {"resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": 1}}},
    "pod_spec_config": {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}], "nodeSelector": {"pool": "gpu"}},
}
CATALOG = f"""\
agents:
  - name: vision
    kind: openai_chat
    model: m
    base_url: "http://127.0.0.1:9"
    kubernetes: {json.dumps(GPU_POD)}
  - {{name: plain, kind: openai_chat, model: m, base_url: "http://127.0.0.1:9"}}
tasks:
  - {{name: look, owner: x, agent: vision, prompt: p, schedule: {{every: 20s}}}}
  - name: look_harder
    owner: x
    agent: vision
    prompt: p
    schedule: {{every: 20s}}
    kubernetes:
      container_config: {{resources: {{requests: {{memory: 8Gi}}}}}}
      pod_spec_config: {{tolerations: [{{key: big, operator: Exists}}]}}
  - {{name: chat, owner: x, agent: plain, prompt: p, schedule: {{every: 20s}}}}
  - {{name: chat_more, owner: x, agent: plain, prompt: p, schedule: {{every: 20s}}}}
"""


@pytest.fixture
def catalog(tmp_path: Path):
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "c.yaml").write_text(CATALOG)
    loaded = load_catalog(tmp_path / "catalog")
    assert loaded.ok, loaded.problems
    return loaded


@pytest.fixture
def k8s_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """An instance whose run launcher is dagster-k8s's K8sRunLauncher, pointed at a cluster that
    does not exist; the tests replace its API client before anything would be sent."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: Config
            clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
            users: [{name: none, user: {token: none}}]
            contexts: [{name: none, context: {cluster: none, user: none}}]
            current-context: none
            """
        )
    )
    home = tmp_path / "k8s-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        textwrap.dedent(
            f"""\
            telemetry: {{enabled: false}}
            run_launcher:
              module: dagster_k8s
              class: K8sRunLauncher
              config:
                load_incluster_config: false
                kubeconfig_file: {kubeconfig}
                service_account_name: agent-pipelines
                instance_config_map: agent-pipelines-instance
                dagster_home: /opt/dagster/dagster_home
                job_image: registry.example.com/agent-pipelines:1.0
                job_namespace: agents
                env_secrets: [agent-tokens]
            """
        )
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


class CapturingBatchApi:
    """Stands in for kubernetes.client.BatchV1Api: keeps the Jobs it is asked to create."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any]] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_: Any) -> Any:
        self.jobs.append((namespace, body))
        return body


def test_bad_blocks_are_reported_at_their_line_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            agents:
              - name: vision
                kind: openai_chat
                model: m
                base_url: "http://127.0.0.1:9"
                kubernetes:
                  pod_spec_config:
                    tolerations: [{key: gpu, efect: NoSchedule}]
            tasks:
              - name: ok_task
                owner: x
                agent: vision
                prompt: p
              - name: bad_task
                owner: x
                agent: vision
                prompt: p
                kubernetes:
                  container_config: {resources: {limts: {cpu: 1}}}
                  pods: {}
            """
        )
    )
    catalog = load_catalog(tmp_path)
    problems = [str(p) for p in catalog.problems]
    assert any("c.yaml:7" in p and "'vision'" in p and "pod_spec_config.tolerations[0].efect" in p and "did you mean 'effect'" in p for p in problems), problems
    assert any("c.yaml:19" in p and "bad_task" in p and "container_config.resources.limts" in p and "pods: unknown section" in p for p in problems), problems


def test_runs_carry_their_pod_configuration_and_never_mix_two(catalog, instance) -> None:
    store = StateStore.for_instance(instance)
    store.register_tasks(list(catalog.tasks), parse_due("2026-01-01T00:00:00Z"))
    requests, _ = Scheduler(catalog, store).tick(SchedulerCursor(), parse_due("2026-11-23T12:00:10Z"), instance)
    first_window = [r for r in requests if r.run_key.startswith("window:2026-11-23T12:00:00.000Z")]
    by_tasks = {tuple(sorted(r.run_config["ops"]["send_scheduled_tasks"]["config"]["tasks"])): r.tags for r in first_window}
    assert set(by_tasks) == {("look",), ("look_harder",), ("chat", "chat_more")}
    assert K8S_CONFIG_TAG not in by_tasks[("chat", "chat_more")]
    as_sent = json.loads(json.dumps(GPU_POD).replace('"nvidia.com/gpu": 1', '"nvidia.com/gpu": "1"'))  # quantities as strings
    assert json.loads(by_tasks[("look",)][K8S_CONFIG_TAG]) == as_sent
    harder = json.loads(by_tasks[("look_harder",)][K8S_CONFIG_TAG])
    assert harder["container_config"]["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    assert [t["key"] for t in harder["pod_spec_config"]["tolerations"]] == ["gpu", "big"]
    assert harder["pod_spec_config"]["nodeSelector"] == {"pool": "gpu"}


def test_the_job_k8s_run_launcher_submits_fits_the_api_and_holds_the_pod_config(catalog, instance, k8s_instance) -> None:
    from dagster._core.code_pointer import ModuleCodePointer  # no public way to give a run a code origin
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    store = StateStore.for_instance(instance)
    store.register_tasks(list(catalog.tasks), parse_due("2026-01-01T00:00:00Z"))
    requests, _ = Scheduler(catalog, store).tick(SchedulerCursor(), parse_due("2026-11-23T12:00:10Z"), instance)
    request = next(r for r in requests if r.run_config["ops"]["send_scheduled_tasks"]["config"]["tasks"] == ["look_harder"])

    launcher = k8s_instance.run_launcher
    assert type(launcher).__name__ == "K8sRunLauncher"
    batch_api = CapturingBatchApi()
    launcher._api_client.batch_api = batch_api  # noqa: SLF001 - where dagster-k8s would call the cluster
    origin = JobPythonOrigin(
        request.job_name,
        RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer("agent_pipelines.definitions", "defs", working_directory="/opt/agent-pipelines"),
            container_image="registry.example.com/agent-pipelines:1.0",
        ),
    )
    run = k8s_instance.add_run(dg.DagsterRun(job_name=request.job_name, run_config=request.run_config, tags=request.tags, job_code_origin=origin))
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    ((namespace, job),) = batch_api.jobs
    assert namespace == "agents"
    body = kubernetes.client.ApiClient().sanitize_for_serialization(job)  # the JSON sent to the API server
    assert model_problems(body, "V1Job") == []
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/agent-pipelines:1.0"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    assert {t["key"] for t in pod["tolerations"]} == {"gpu", "big"}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert {"secretRef": {"name": "agent-tokens"}} in container["envFrom"]
    assert body["metadata"]["labels"]["dagster/run-id"] == run.run_id


def test_batch_jobs_and_their_shard_steps_carry_the_task_pod_config(tmp_path: Path, fleet) -> None:  # noqa: F811
    directory = _catalog(tmp_path, fleet, task_extra="    kubernetes: {container_config: {resources: {requests: {cpu: 500m}}}}")
    defs = build_definitions(load_catalog(directory))
    job = defs.resolve_job_def("score_tickets_batch_job")
    expected = {"container_config": {"resources": {"requests": {"cpu": "500m"}}}}
    assert json.loads(job.tags[K8S_CONFIG_TAG]) == expected
    (node,) = [n for n in job.graph.node_defs if n.name == "score_tickets"]
    assert json.loads(node.tags[K8S_CONFIG_TAG]) == expected


def test_a_pod_launcher_with_results_on_the_pods_disk_is_refused(tmp_path: Path, fleet, k8s_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("AGENT_PIPELINES_RESULTS_URL", raising=False)
    defs = build_definitions(load_catalog(_catalog(tmp_path, fleet)))
    result = _backfill(defs, k8s_instance, ["node0", "node1", "node2", "node3"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    why = failure.step_failure_data.error.message
    assert "AGENT_PIPELINES_RESULTS_URL" in why and "K8sRunLauncher" in why, why
    assert sum(agent.state.requests_total for agent in fleet) == 0, "no agent was called"


def test_shards_per_run_makes_a_backfill_one_run_per_shard(tmp_path: Path, fleet) -> None:  # noqa: F811
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    single = build_definitions(load_catalog(_catalog(tmp_path / "one", fleet)))
    split = build_definitions(load_catalog(_catalog(tmp_path / "many", fleet, task_extra="    shards_per_run: 1")))
    key = dg.AssetKey("score_tickets")
    assert single.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.single_run()
    assert split.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.multi_run(1)
