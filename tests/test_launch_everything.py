"""Every job, asset and asset check the UI offers, launched through the real webserver's GraphQL
API on a fresh instance with the example catalog, as a new user would: each run succeeds, or
the launch is refused before any run starts with a message saying what to give."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_pipelines.demo_agent import DemoAgentConfig, run_in_thread
from agent_pipelines.http_server import bind_socket
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "catalog"
TOKEN = "launch-token"
#: With an empty config, scheduled_tasks_job fires what falls due until the end of this minute.
RUN_TIMEOUT_S = 150
#: Runs in flight at once (each is a process that imports Dagster: 2 cores).
AT_ONCE = 3

REPOSITORY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name location { name }
    jobs { name isAssetJob }
    assetNodes { assetKey { path } isPartitioned isExecutable jobNames
      assetChecksOrError { ... on AssetChecks { checks { name } } } }
} } } }
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""

STATUS = '{ runOrError(runId: "%s") { ... on Run { status } } }'


@dataclass
class Launch:
    what: str
    outcome: str  # SUCCESS, FAILURE, ... or REFUSED
    detail: str = ""


def _free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    """A fresh DAGSTER_HOME, the example catalog pointed at a demo agent, a real webserver."""
    with run_in_thread(DemoAgentConfig(token=TOKEN)) as agent:
        catalog = tmp_path / "catalog"
        shutil.copytree(EXAMPLE, catalog)
        for path in catalog.glob("*.yaml"):
            path.write_text(path.read_text().replace("http://127.0.0.1:8765", agent.url))
        home = tmp_path / "home"
        home.mkdir()
        # Runs start from the webserver at once (no daemon needed to dequeue them).
        (home / "dagster.yaml").write_text(
            "telemetry: {enabled: false}\n"
            "run_coordinator: {module: dagster.core.run_coordinator, class: DefaultRunCoordinator}\n"
        )
        port = _free_port()
        env = dict(
            os.environ,
            DAGSTER_HOME=str(home),
            AGENT_PIPELINES_CATALOG=str(catalog),
            DEMO_AGENT_TOKEN=TOKEN,
            DEMO_INGRESS_TOKEN="ingress-token",
        )
        log = (tmp_path / "webserver.log").open("w")
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "agent_pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, 15)
            server.wait(30)
            log.close()


def _graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def _launch(url: str, location: str, repository: str, job: str, what: str, **extra: Any) -> Launch | str:
    selector: dict[str, Any] = {"repositoryLocationName": location, "repositoryName": repository, "pipelineName": job}
    for key in ("assetSelection", "assetCheckSelection"):
        if key in extra:
            selector[key] = extra[key]
    params = {"selector": selector, "runConfigData": {}, "executionMetadata": {"tags": extra.get("tags", [])}}
    result = _graphql(url, LAUNCH, {"params": params})["launchPipelineExecution"]
    if result["__typename"] == "LaunchRunSuccess":
        return result["run"]["runId"]
    detail = "; ".join(e["message"] for e in result.get("errors", [])) or result.get("message", result["__typename"])
    return Launch(what, "REFUSED", detail)


def test_every_job_asset_and_check_succeeds_or_is_refused_with_a_reason(webserver: str) -> None:
    (repo,) = _graphql(webserver, REPOSITORY)["repositoriesOrError"]["nodes"]
    location, name = repo["location"]["name"], repo["name"]
    pending: dict[str, str] = {}
    results: list[Launch] = []

    def wait(until_fewer_than: int) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(pending) >= until_fewer_than and time.monotonic() < deadline:
            for run_id, what in list(pending.items()):
                state = _graphql(webserver, STATUS % run_id)["runOrError"]["status"]
                if state in ("SUCCESS", "FAILURE", "CANCELED"):
                    results.append(Launch(what, state, run_id))
                    del pending[run_id]
            time.sleep(0.5)

    def launch(what: str, job: str, **extra: Any) -> None:
        wait(until_fewer_than=AT_ONCE)
        outcome = _launch(webserver, location, name, job, what, **extra)
        if isinstance(outcome, Launch):
            results.append(outcome)
        else:
            pending[outcome] = what

    for job in repo["jobs"]:
        if job["name"].startswith("__"):
            continue
        tags = [{"key": "dagster/partition", "value": "shard-00"}] if job["name"].endswith("_batch_job") else []
        launch(f"job {job['name']}", job["name"], tags=tags)
    for node in repo["assetNodes"]:
        key = node["assetKey"]
        shown = "/".join(key["path"])
        asset_job = next((j for j in node["jobNames"] if j.startswith("__ASSET_JOB")), None)
        if node["isExecutable"] and asset_job:
            tags = [{"key": "dagster/partition", "value": "shard-00"}] if node["isPartitioned"] else []
            launch(f"asset {shown}", asset_job, assetSelection=[key], assetCheckSelection=[], tags=tags)
        for check in (node["assetChecksOrError"] or {}).get("checks", []):
            check_job = asset_job or "__ASSET_JOB"
            launch(f"check {shown}:{check['name']}", check_job, assetSelection=[], assetCheckSelection=[{"assetKey": key, "name": check["name"]}])
    wait(until_fewer_than=1)
    results += [Launch(what, "STILL RUNNING", run_id) for run_id, what in pending.items()]

    report = "\n".join(f"{r.what}: {r.outcome} {r.detail[:300]}" for r in sorted(results, key=lambda r: r.what))
    assert all(r.outcome in ("SUCCESS", "REFUSED") for r in results), report
    refused = {r.what: r.detail for r in results if r.outcome == "REFUSED"}
    # Refusals name what to give: the event task's sample payload, the control job's task.
    assert set(refused) <= {"asset deploy_review", "check deploy_review:succeeded", "job agent_tasks_job", "job task_control_job"}, report
    assert all(("payload" in d or "task" in d) for d in refused.values()), report
    assert len([r for r in results if r.outcome == "SUCCESS"]) >= 20, report
