"""The Kubernetes deployment (Dockerfile, deploy/helm/values.yaml, deploy/kubernetes/*.yaml), checked
without a cluster: every manifest converts strictly into the `kubernetes` client's model of its
kind (a misspelt field fails), the failover daemon, the ingress and the UI gate are wired to what
the Helm release creates, the gate's probes hit a path the real gate answers without a token, the
chart's own (unauthenticated) webserver has no pods, the values hold what the chart needs for what
we rely on, the run launcher
section is accepted by dagster-k8s's own config schema, and the Job it would submit for a run of
the example catalog holds the catalog, the tokens, the results settings and the catalog's pod
configuration exactly once. Fast: no network, no cluster, no database."""

from __future__ import annotations

import copy
import fnmatch
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
VALUES = ROOT / "deploy" / "helm" / "values.yaml"

KINDS = {
    ("apps/v1", "Deployment"): kubernetes.client.V1Deployment,
    ("v1", "Service"): kubernetes.client.V1Service,
    ("policy/v1", "PodDisruptionBudget"): kubernetes.client.V1PodDisruptionBudget,
    ("v1", "ConfigMap"): kubernetes.client.V1ConfigMap,
    ("v1", "Secret"): kubernetes.client.V1Secret,
}
CATALOG_MOUNT = "/opt/agent-pipelines/catalog"
TOKENS_MOUNT = "/var/run/secrets/agents"
UI = "agent-pipelines-ui"


def to_model(doc: dict[str, Any]) -> Any:
    """dagster-k8s's strict conversion: camelCase to snake_case checked against each model's
    attribute map all the way down (unknown keys raise), then the model built from it."""
    cls = KINDS[(doc["apiVersion"], doc["kind"])]
    return k8s_model_from_dict(cls, k8s_snake_case_dict(cls, doc))


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifest_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def release_names(values: dict[str, Any]) -> dict[str, str]:
    """What the chart names things with these values (templates/helpers/_helpers.tpl at the commit
    named in values.yaml): `dagster.fullname` is global.fullnameOverride; the instance ConfigMap is
    `<fullname>-instance`, the workspace `<fullname>-workspace-yaml`; the PostgreSQL secret and the
    service account are global.postgresqlSecretName and global.serviceAccountName."""
    fullname = values["global"]["fullnameOverride"]
    return {
        "instance": f"{fullname}-instance",
        "workspace": f"{fullname}-workspace-yaml",
        "postgres_secret": values["global"]["postgresqlSecretName"],
        "service_account": values["global"]["serviceAccountName"],
        "dagster_home": values["global"]["dagsterHome"],
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def mounts_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volumes_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


# Manifests: strict models --------------------------------------------------------------------------


def test_every_manifest_document_converts_strictly_into_its_kubernetes_model() -> None:
    docs = manifest_docs()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"}
    for filename, doc in docs:
        model = to_model(doc)
        assert model.metadata.name == doc["metadata"]["name"], filename


@pytest.mark.parametrize(
    ("name", "path", "field", "typo"),
    [
        ("agent-pipelines-daemon", ["spec", "template", "spec", "affinity", "podAntiAffinity"], "preferredDuringSchedulingIgnoredDuringExecution", "preferedDuringSchedulingIgnoredDuringExecution"),
        ("agent-pipelines-daemon", ["spec", "strategy", "rollingUpdate"], "maxUnavailable", "maxUnavailible"),
        ("agent-pipelines-ingress", ["spec", "template", "spec", "containers", 0, "readinessProbe"], "httpGet", "httpGett"),
        ("agent-pipelines-ingress", ["spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet"], "path", "pathh"),
        (UI, ["spec", "template", "spec", "containers", 0, "startupProbe"], "failureThreshold", "failureTreshold"),
        (UI, ["spec", "template", "spec", "containers", 0, "envFrom", 0, "secretRef"], "optional", "optinal"),
    ],
)
def test_a_misspelt_field_anywhere_fails_the_conversion(name: str, path: list[Any], field: str, typo: str) -> None:
    doc = copy.deepcopy(find("Deployment", name))
    node = doc
    for key in path:
        node = node[key]
    node[typo] = node.pop(field)
    with pytest.raises(Exception, match="Unexpected keys"):
        to_model(doc)


def test_a_wrong_type_fails_the_conversion() -> None:
    doc = copy.deepcopy(find("Deployment", "agent-pipelines-daemon"))
    doc["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0] = "dagster-instance"
    with pytest.raises(Exception, match="must be a dict"):
        to_model(doc)


# The failover daemon ------------------------------------------------------------------------------


def test_the_daemon_runs_the_failover_wrapper_in_two_replicas_that_roll_without_a_gap() -> None:
    daemon = find("Deployment", "agent-pipelines-daemon")
    spec = daemon["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert container(daemon)["command"] == ["agent-pipelines", "daemon", "-w", "/dagster-workspace/workspace.yaml"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_disruption_budget_keeps_one_daemon_wrapper_and_selects_only_daemon_pods() -> None:
    pdb = find("PodDisruptionBudget", "agent-pipelines-daemon")
    assert pdb["spec"]["minAvailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= find("Deployment", "agent-pipelines-daemon")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= find("Deployment", "agent-pipelines-ingress")["spec"]["template"]["metadata"]["labels"].items()


def test_the_daemon_uses_the_instance_workspace_password_and_account_of_the_release(release_names: dict[str, str]) -> None:
    daemon = find("Deployment", "agent-pipelines-daemon")
    pod = daemon["spec"]["template"]["spec"]
    c = container(daemon)
    env, mounts, volumes = env_of(c), mounts_of(c), volumes_of(daemon)
    # Launches and monitors run pods: the chart's service account, with its token.
    assert pod["serviceAccountName"] == release_names["service_account"]
    assert pod["automountServiceAccountToken"] is True
    # dagster.yaml from the chart's instance ConfigMap, in DAGSTER_HOME.
    home = env["DAGSTER_HOME"]["value"]
    assert home == release_names["dagster_home"]
    instance_mount = mounts[f"{home}/dagster.yaml"]
    assert instance_mount["subPath"] == "dagster.yaml"
    assert volumes[instance_mount["name"]]["configMap"]["name"] == release_names["instance"]
    # The workspace the wrapper's -w names.
    workspace_mount = mounts["/dagster-workspace"]
    assert volumes[workspace_mount["name"]]["configMap"]["name"] == release_names["workspace"]
    # The password dagster.yaml reads (postgres_db.password: {env: DAGSTER_PG_PASSWORD}), as the
    # chart's own daemon gets it.
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": release_names["postgres_secret"], "key": "postgresql-password"}}


@pytest.mark.parametrize("name", ["agent-pipelines-daemon", "agent-pipelines-ingress"])
def test_platform_pods_mount_the_catalog_and_tokens_like_the_code_location(name: str, values: dict[str, Any], release_names: dict[str, str]) -> None:
    deployment = find("Deployment", name)
    c = container(deployment)
    mounts, volumes = mounts_of(c), volumes_of(deployment)
    code_location = values["dagster-user-deployments"]["deployments"][0]
    for path in (CATALOG_MOUNT, TOKENS_MOUNT):
        (expected,) = [m for m in code_location["volumeMounts"] if m["mountPath"] == path]
        assert mounts[path] == expected
        (expected_volume,) = [v for v in code_location["volumes"] if v["name"] == expected["name"]]
        assert volumes[expected["name"]] == expected_volume
    assert env_of(c)["AGENT_PIPELINES_CATALOG"] == env_of(code_location)["AGENT_PIPELINES_CATALOG"]
    assert env_of(c)["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == release_names["postgres_secret"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


# The ingress ---------------------------------------------------------------------------------------


def test_the_ingress_serves_8788_with_probes_on_health_behind_its_service() -> None:
    ingress = find("Deployment", "agent-pipelines-ingress")
    c = container(ingress)
    assert ingress["spec"]["replicas"] == 2
    assert c["command"] == ["agent-pipelines", "ingress", "--host", "0.0.0.0", "--port", "8788"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health"
        assert ports.get(get["port"], get["port"]) == 8788
    service = find("Service", "agent-pipelines-ingress")
    assert service["spec"]["selector"].items() <= ingress["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == 8788
    # The policy limits which tasks each event source may start: the same ConfigMap as the gate's.
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in ingress["spec"]["template"]["spec"]["volumes"]}
    assert env["AGENT_PIPELINES_POLICY"] == mounts["agent-pipelines-policy"] + "/policy.yaml"
    assert volumes["agent-pipelines-policy"]["configMap"]["name"] == "agent-pipelines-policy"


# The UI gate --------------------------------------------------------------------------------------


def test_the_ui_runs_the_gate_on_the_release_workspace_instance_and_policy(release_names: dict[str, str]) -> None:
    ui = find("Deployment", UI)
    spec, pod = ui["spec"], ui["spec"]["template"]["spec"]
    c = container(ui)
    env, mounts, volumes = env_of(c), mounts_of(c), volumes_of(ui)
    assert c["command"] == ["agent-pipelines", "webserver", "-w", "/dagster-workspace/workspace.yaml", "-h", "0.0.0.0", "-p", "3000"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 3000}
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    # Terminating a run deletes its Job (K8sRunLauncher): the chart's account, as its webserver has.
    assert pod["serviceAccountName"] == release_names["service_account"]
    assert pod["automountServiceAccountToken"] is True
    # The instance, the workspace -w names and the password, as the daemon gets them.
    home = env["DAGSTER_HOME"]["value"]
    assert home == release_names["dagster_home"]
    instance_mount = mounts[f"{home}/dagster.yaml"]
    assert instance_mount["subPath"] == "dagster.yaml"
    assert volumes[instance_mount["name"]]["configMap"]["name"] == release_names["instance"]
    assert volumes[mounts["/dagster-workspace"]["name"]]["configMap"]["name"] == release_names["workspace"]
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": release_names["postgres_secret"], "key": "postgresql-password"}}
    # The catalog, as every platform pod mounts it; no agent tokens: the gate calls no agent.
    daemon = find("Deployment", "agent-pipelines-daemon")
    assert mounts[CATALOG_MOUNT] == mounts_of(container(daemon))[CATALOG_MOUNT]
    assert volumes[mounts[CATALOG_MOUNT]["name"]] == volumes_of(daemon)[mounts[CATALOG_MOUNT]["name"]]
    assert env["AGENT_PIPELINES_CATALOG"]["value"] == CATALOG_MOUNT
    assert TOKENS_MOUNT not in mounts and "agent-tokens" not in {v.get("secret", {}).get("secretName") for v in volumes.values()}
    # The policy file AGENT_PIPELINES_POLICY names is a key of the policy ConfigMap, mounted
    # without subPath (the gate reloads it) and not optional (no policy, no pod: never an open UI).
    policy_file = Path(env["AGENT_PIPELINES_POLICY"]["value"])
    policy_mount = mounts[str(policy_file.parent)]
    assert "subPath" not in policy_mount and policy_mount["readOnly"] is True
    policy_volume = volumes[policy_mount["name"]]["configMap"]
    assert policy_volume["name"] == "agent-pipelines-policy" and not policy_volume.get("optional")
    assert policy_file.name in find("ConfigMap", "agent-pipelines-policy")["data"]
    # Tokens for the policy's token_env entries, optional.
    assert c["envFrom"] == [{"secretRef": {"name": "ui-tokens", "optional": True}}]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_ui_service_sends_port_80_to_the_gate_pods_only() -> None:
    ui = find("Deployment", UI)
    service = find("Service", UI)
    assert service["spec"]["type"] == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector.items() <= ui["spec"]["template"]["metadata"]["labels"].items()
    for other in ("agent-pipelines-daemon", "agent-pipelines-ingress"):
        assert not selector.items() <= find("Deployment", other)["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in container(ui)["ports"]}
    assert port["port"] == 80 and ports.get(port["targetPort"], port["targetPort"]) == 3000


def cluster_policy(tmp_path: Path, environ: dict[str, str]) -> Any:
    """The example policy ConfigMap's file, loaded by the gate's own loader."""
    from agent_pipelines.access.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(find("ConfigMap", "agent-pipelines-policy")["data"]["policy.yaml"])
    return load_policy(path, environ=environ)


def test_the_cluster_policy_is_deploy_policy_yaml_without_trusted_proxies_or_the_demo_token(tmp_path: Path) -> None:
    from agent_pipelines.access.policy import load_policy

    ours = cluster_policy(tmp_path, environ={})
    demo = load_policy(ROOT / "deploy" / "policy.yaml", environ={})

    def shape(policy: Any) -> dict[str, Any]:
        spec = policy.spec.model_dump()
        for user in spec["users"].values():
            user["tokens"] = [t["token_env"] or "sha256" for t in user["tokens"]]
        spec.pop("trusted_proxies")
        return spec

    assert shape(ours) == shape(demo)
    # `kubectl port-forward` reaches the pod from 127.0.0.1: trusting loopback would let anyone
    # allowed to port-forward claim any identity with X-Forwarded-User.
    assert ours.spec.trusted_proxies == []
    assert demo.user_for_token("demo-viewer-token") == "carol@example.com"
    assert ours.user_for_token("demo-viewer-token") is None
    # Every token_env has its key in the ui-tokens Secret the gate reads with envFrom, empty
    # (nobody signs in with a copy applied unedited).
    tokens = find("Secret", "ui-tokens")["stringData"]
    assert set(tokens) == {t.token_env for u in ours.spec.users.values() for t in u.tokens if t.token_env}
    assert set(tokens.values()) == {""}
    assert set(ours.missing_token_envs) == set(tokens)


def test_the_ui_probes_hit_a_path_the_real_gate_answers_without_a_token(tmp_path: Path) -> None:
    """The gate of `agent-pipelines webserver` with the cluster policy, around a stand-in for
    Dagster's app: the probe paths answer 200 to nobody in particular, everything else wants a
    token, and identity headers from 127.0.0.1 (where port-forwarded connections come from) are
    not believed."""
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from agent_pipelines.access.gate import Gate

    policy = cluster_policy(tmp_path, environ={"AGENT_PIPELINES_TOKEN_ADMIN": "t-admin"})

    async def dagster(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("dagster")(scope, receive, send)

    gate = Gate(dagster, policy=lambda: policy, store=None, targets=None)  # type: ignore[arg-type]
    c = container(find("Deployment", UI))
    paths = {c[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    # No `with`: the server runs with lifespan="off", so no lifespan events (commands/webserver.py).
    kubelet = TestClient(gate, client=("10.0.0.7", 40000))
    for path in paths:
        response = kubelet.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.text != "dagster", f"{path} should be the gate's own answer, not Dagster's"
    assert kubelet.get("/").status_code == 401
    assert kubelet.post("/graphql", json={"query": "{ version }"}).status_code == 401
    assert kubelet.get("/", headers={"Authorization": "Bearer t-admin"}).text == "dagster"
    port_forward = TestClient(gate, client=("127.0.0.1", 40000))
    assert port_forward.get("/", headers={"X-Forwarded-User": "ops-admin"}).status_code == 401


# The catalog ConfigMap ------------------------------------------------------------------------------


def test_the_example_catalog_loads_as_the_pods_see_it_through_the_configmap_volume(tmp_path: Path, values: dict[str, Any]) -> None:
    """A ConfigMap volume as the kubelet writes it: the files in a hidden timestamped directory,
    `..data` linking to it, and one link per key. The loader reads each file once (it skips the
    hidden copy)."""
    from agent_pipelines.catalog.loader import load_catalog

    catalog = find("ConfigMap", "agent-pipelines-catalog")
    mount = tmp_path / "catalog"
    timestamped = mount / "..2026_01_01_00_00_00.000000001"
    timestamped.mkdir(parents=True)
    for key, text in catalog["data"].items():
        (timestamped / key).write_text(text)
        (mount / key).symlink_to(Path("..data") / key)
    (mount / "..data").symlink_to(timestamped.name)

    configured = env_of(values["dagster-user-deployments"]["deployments"][0])["AGENT_PIPELINES_CATALOG"]["value"]
    assert configured == CATALOG_MOUNT
    loaded = load_catalog(mount)
    assert loaded.ok, loaded.problems
    assert set(loaded.agents) == {"summarizer"} and set(loaded.tasks) == {"daily_summary"}
    agent = loaded.agents["summarizer"]
    assert agent.auth_file == f"{TOKENS_MOUNT}/summarizer"
    assert agent.kubernetes["pod_spec_config"]["tolerations"][0]["effect"] == "NoSchedule"
    # Every agent's token file is a key of the agent-tokens Secret.
    tokens = find("Secret", "agent-tokens")
    for a in loaded.agents.values():
        if a.auth_file:
            assert Path(a.auth_file).parent == Path(TOKENS_MOUNT)
            assert Path(a.auth_file).name in tokens["stringData"]


def test_the_example_secrets_have_the_keys_the_platform_reads(release_names: dict[str, str]) -> None:
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(find("Secret", "results-storage")["stringData"])
    assert set(find("Secret", release_names["postgres_secret"])["stringData"]) == {"postgresql-password"}


# The Helm values ------------------------------------------------------------------------------------


def test_the_values_hold_what_the_chart_needs_for_what_we_rely_on(values: dict[str, Any]) -> None:
    assert values["global"]["fullnameOverride"] == values["fullnameOverride"] == "agent-pipelines"
    # With global.fullnameOverride the subchart's Role/RoleBinding would collide with the main
    # chart's (same <fullname>-role names): its RBAC stays off.
    assert values["dagster-user-deployments"]["rbacEnabled"] is False
    # The chart's webserver (no sign-in) has no pods: the UI is the gate's (webserver-gate.yaml).
    assert values["dagsterWebserver"]["replicaCount"] == 0
    assert values["dagsterDaemon"] == {"enabled": False}
    assert values["telemetry"] == {"enabled": False}
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    users = values["dagster-user-deployments"]
    assert users["enabled"] is True and users["enableSubchart"] is True
    (code,) = users["deployments"]
    assert code["name"] == "agent-pipelines"
    assert code["dagsterApiGrpcArgs"] == ["-m", "agent_pipelines.definitions"]
    assert code["port"] == 3030
    assert code["image"]["repository"] and code["image"]["tag"] and code["image"]["pullPolicy"]
    assert values["dagsterWebserver"]["image"] == code["image"]
    assert env_of(code)["AGENT_PIPELINES_RESULTS_URL"]["value"] == "s3://agent-pipelines-results/prod"
    assert {"name": "results-storage"} in code["envSecrets"]
    assert {m["mountPath"] for m in code["volumeMounts"]} == {CATALOG_MOUNT, TOKENS_MOUNT}
    volumes = {v["name"]: v for v in code["volumes"]}
    assert {"configMap": {"name": "agent-pipelines-catalog"}}.items() <= volumes["agent-pipelines-catalog"].items()
    assert volumes["agent-tokens"]["secret"]["secretName"] == "agent-tokens"
    for volume in code["volumes"]:
        k8s_model_from_dict(kubernetes.client.V1Volume, k8s_snake_case_dict(kubernetes.client.V1Volume, volume))
    for mount in code["volumeMounts"]:
        k8s_model_from_dict(kubernetes.client.V1VolumeMount, k8s_snake_case_dict(kubernetes.client.V1VolumeMount, mount))


def test_the_run_queue_and_run_monitoring_reach_dagster_yaml_with_the_chart_daemon_off(values: dict[str, Any]) -> None:
    """The chart writes dagsterDaemon.runCoordinator/runMonitoring into dagster.yaml only with its
    daemon on, so they are in additionalInstanceConfig (appended to dagster.yaml as is): checked
    with Dagster's own instance schema and by building the run coordinator from it."""
    # Dagster's instance schema and config validation have no public API; the instance uses these.
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._serdes.config_class import ConfigurableClassData

    extra = values["additionalInstanceConfig"]
    result = validate_config(dagster_instance_config_schema(), extra)
    assert result.success, [e.message for e in result.errors or []]

    coordinator = extra["run_coordinator"]
    built = ConfigurableClassData(coordinator["module"], coordinator["class"], yaml.safe_dump(coordinator["config"])).rehydrate(QueuedRunCoordinator)
    queue = built.get_run_queue_config()
    assert queue.max_concurrent_runs == 25
    assert built.dequeue_interval_seconds == 1
    assert [dict(limit) for limit in queue.tag_concurrency_limits] == [{"key": "agent_pipelines/catchup", "value": "true", "limit": 1}]
    assert extra["run_monitoring"]["enabled"] is True
    assert extra["run_monitoring"]["start_timeout_seconds"] == 180


def launcher_config(values: dict[str, Any], kubeconfig: Path | None = None) -> dict[str, Any]:
    """runLauncher.config.k8sRunLauncher as the chart's templates/helpers/instance/_run-launcher.tpl
    writes it into dagster.yaml (`dagsterYaml.runLauncher.k8s`): camelCase keys to the launcher's
    own, plus what the template fills in from the release (service account, instance ConfigMap,
    PostgreSQL secret, DAGSTER_HOME). `kubeconfig` replaces in-cluster config for the test."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    fullname = values["global"]["fullnameOverride"]
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or "agent-pipelines",  # default: the release namespace
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{fullname}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    renames = {
        "envVars": "env_vars",
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "schedulerName": "scheduler_name",
        "securityContext": "security_context",
    }
    for key, name in renames.items():
        if k8s.get(key):
            config[name] = k8s[key]
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if k8s.get(key):
            config[name] = [item["name"] for item in k8s[key] if "name" in item]
    if k8s.get("image"):
        config["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    sections = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    if k8s.get("runK8sConfig"):
        config["run_k8s_config"] = {sections[k]: v for k, v in k8s["runK8sConfig"].items() if v}
    if kubeconfig is not None:
        config["load_incluster_config"] = False
        config["kubeconfig_file"] = str(kubeconfig)
    return config


def test_the_run_launcher_section_is_accepted_by_dagster_k8s(values: dict[str, Any]) -> None:
    # dagster-k8s's launcher config schema is checked the way the instance checks it when it loads
    # dagster.yaml; there is no public validation entry point, hence the private module.
    from dagster._config import validate_config
    from dagster_k8s import K8sRunLauncher

    config = launcher_config(values)
    result = validate_config(K8sRunLauncher.config_type(), config)
    assert result.success, [e.message for e in result.errors or []]
    assert set(config["env_secrets"]) == {"agent-tokens", "results-storage"}
    assert {m["mountPath"] for m in config["volume_mounts"]} == {CATALOG_MOUNT, TOKENS_MOUNT}

    bad = dict(config, volume_mount=config["volume_mounts"])
    assert not validate_config(K8sRunLauncher.config_type(), bad).success


def code_location_container_context(values: dict[str, Any]) -> dict[str, Any]:
    """The container context the user-deployments subchart gives the code server
    (`dagsterUserDeployments.k8sContainerContext`), which runs launched from it inherit."""
    fullname = values["global"]["fullnameOverride"]
    code = values["dagster-user-deployments"]["deployments"][0]
    return {
        "k8s": {
            "image_pull_policy": code["image"]["pullPolicy"],
            "env_config_maps": [f"{fullname}-{code['name']}-user-env"],
            "env_secrets": [s["name"] for s in code.get("envSecrets", [])],
            "volume_mounts": code.get("volumeMounts", []),
            "volumes": code.get("volumes", []),
            "namespace": "agent-pipelines",
            "service_account_name": values["global"]["serviceAccountName"],
            "env": code.get("env", []),
            "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
        }
    }


def test_the_job_a_run_gets_holds_catalog_tokens_results_and_the_catalog_pod_config_once(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-k8s builds the Job of a run of the example task from the values' launcher config, the
    code location's container context and the catalog's merged `kubernetes:` blocks."""
    import dagster as dg
    import dagster_k8s.launcher
    from dagster._core.code_pointer import (
        ModuleCodePointer,  # no public way to give a run a code origin
    )
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import construct_dagster_k8s_job

    from agent_pipelines.kubernetes_config import merge

    # The launcher would load the cluster's credentials; there is no cluster here.
    monkeypatch.setattr(dagster_k8s.launcher, "load_kubernetes_config", lambda **_: None)
    launcher = K8sRunLauncher(**launcher_config(values))

    catalog = {name: yaml.safe_load(text) for name, text in find("ConfigMap", "agent-pipelines-catalog")["data"].items()}
    (agent,) = catalog["agents.yaml"]["agents"]
    (task,) = catalog["tasks.yaml"]["tasks"]
    pod_config = merge([agent["kubernetes"], task["kubernetes"]])
    image = f"{values['dagster-user-deployments']['deployments'][0]['image']['repository']}:0.1.0"
    run = dg.DagsterRun(
        job_name="window_job",
        tags={"dagster-k8s/config": json.dumps(pod_config)},
        job_code_origin=JobPythonOrigin(
            "window_job",
            RepositoryPythonOrigin(
                executable_path=sys.executable,
                code_pointer=ModuleCodePointer("agent_pipelines.definitions", "defs", working_directory=None),
                container_image=image,
                container_context=code_location_container_context(values),
            ),
        ),
    )
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-test",
        pod_name="dagster-run-test",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    body = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    # What the API server would receive fits the Job model (the round trip is strict too).
    k8s_model_from_dict(kubernetes.client.V1Job, k8s_snake_case_dict(kubernetes.client.V1Job, body))
    pod = body["spec"]["template"]["spec"]
    (c,) = pod["containers"]

    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names)), f"a volume twice makes the API server refuse the Job: {names}"
    assert {"agent-pipelines-catalog", "agent-tokens"} <= set(names)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {CATALOG_MOUNT, TOKENS_MOUNT} <= set(mounts)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DAGSTER_HOME"] == values["global"]["dagsterHome"]
    (password,) = [e for e in c["env"] if e["name"] == "DAGSTER_PG_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": values["global"]["postgresqlSecretName"], "key": "postgresql-password"}
    env_names = [e["name"] for e in c["env"]]
    assert len(env_names) == len(set(env_names)), env_names
    assert env["AGENT_PIPELINES_RESULTS_URL"] == "s3://agent-pipelines-results/prod"
    assert env["AGENT_PIPELINES_CATALOG"] == CATALOG_MOUNT
    secrets = [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e]
    assert sorted(set(secrets)) == sorted(secrets) and {"agent-tokens", "results-storage"} <= set(secrets)
    assert pod["serviceAccountName"] == values["global"]["serviceAccountName"]
    assert c["image"] == image
    # The catalog's blocks: the task's memory limit over the agent's, the agent's toleration.
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    assert pod["tolerations"] == [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"pool": "agents"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert body["spec"]["ttlSecondsAfterFinished"] == 86400


# The image ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def test_the_image_serves_the_code_location_with_the_catalog_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert ("FROM", "python:3.11-slim") in instructions
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    assert env["AGENT_PIPELINES_CATALOG"] == CATALOG_MOUNT
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    cmd = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"][-1]
    assert cmd == ["dagster", "code-server", "start", "-m", "agent_pipelines.definitions", "-h", "0.0.0.0", "-p", "3030"]
    # The chart gives the code location `args` and our pods a `command`: no ENTRYPOINT to get in the way.
    assert not [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    user = [rest for keyword, rest in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert any(keyword == "RUN" and "pip install" in rest and rest.split("pip install", 1)[1].split("&&")[0].strip().endswith(".") for keyword, rest in instructions)
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    assert ["catalog", CATALOG_MOUNT] in copies


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything, then lets back in what the image needs."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path, pat.replace("**/", "")):
                result = not negate
        return result

    copied = [rest.split()[:-1] for keyword, rest in dockerfile_instructions() if keyword == "COPY" and "--from" not in rest]
    sources = [source for group in copied for source in group]
    assert sources, "the Dockerfile copies nothing?"
    for source in sources:
        assert not ignored(source), f"{source} is excluded from the build context"
        assert (ROOT / source).exists(), source
    for path in (".venv", ".git", "tests", "deploy", ".dagster_home"):
        assert ignored(path), path
    assert ignored("agent_pipelines/__pycache__")
    # pyproject.toml reads README.md; every package it lists is copied.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["readme"] in sources
    for include in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert include.rstrip("*") in sources, include
