"""The UI as a user sees it: `agent-pipelines up` with the example catalog (plus one broken
spec) and an access policy, opened in headless Chromium (Debian's `chromium`, driven by
Playwright). Screenshots are kept in .test-artifacts/ui/ for a human to look at."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent_pipelines.local_platform import free_port
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "catalog"
ARTIFACTS = Path(os.environ.get("AGENT_PIPELINES_TEST_ARTIFACTS", PROJECT_ROOT / ".test-artifacts")) / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ADMIN_TOKEN = "browser-admin-token"
VIEWER_TOKEN = "browser-viewer-token"
#: The platform has to start (five processes on two cores), fire and publish; generous on purpose.
READY_S = 180

BROKEN_SPEC = """\
tasks:
  - name: nightly_audit
    owner: platform
    agent: demo
    prompt: Audit the fleet.
    schedule: "61 25 * * *"
"""

POLICY = """\
users:
  root-admin: {tokens: [{token_env: BROWSER_ADMIN_TOKEN}]}
  reader: {tokens: [{token_env: BROWSER_VIEWER_TOKEN}]}
grants:
  - {role: viewer, users: [reader]}
  - {role: admin, users: [root-admin]}
"""

LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) { __typename ... on PythonError { message } }
}
"""


@dataclass
class RunningPlatform:
    url: str
    home: Path

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    root = tmp_path_factory.mktemp("browser")
    agent_port, ui_port = free_port(), free_port()
    catalog = root / "catalog"
    shutil.copytree(EXAMPLE, catalog)
    for path in catalog.glob("*.yaml"):
        path.write_text(path.read_text().replace("http://127.0.0.1:8765", f"http://127.0.0.1:{agent_port}"))
    (catalog / "broken.yaml").write_text(BROKEN_SPEC)
    (root / "policy.yaml").write_text(POLICY)
    home = root / "home"
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        AGENT_PIPELINES_CATALOG=str(catalog),
        AGENT_PIPELINES_POLICY=str(root / "policy.yaml"),
        BROWSER_ADMIN_TOKEN=ADMIN_TOKEN,
        BROWSER_VIEWER_TOKEN=VIEWER_TOKEN,
    )
    env.pop("AGENT_PIPELINES_POSTGRES_URL", None)
    log = (root / "up.log").open("w")
    up = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "agent-pipelines"), "up", "--port", str(ui_port),
            "--code-server-port", str(free_port()), "--demo-agent-port", str(agent_port), "--ingress-port", str(free_port()),
        ],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    platform = RunningPlatform(f"http://127.0.0.1:{ui_port}", home)
    try:
        _wait(lambda: _answers(platform), READY_S, f"the UI on :{ui_port} (see {root / 'up.log'})")
        yield platform
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()


def _answers(platform: RunningPlatform) -> bool:
    try:
        with platform.client(ADMIN_TOKEN) as client:
            return client.get("/server_info").status_code == 200
    except httpx.TransportError:
        return False


def _wait(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _executions(platform: RunningPlatform, **params: str) -> list[dict]:
    with platform.client(VIEWER_TOKEN) as client:
        response = client.get("/ops/executions.json", params=params)
    response.raise_for_status()
    return response.json()["executions"]


def _viewer_tries_to_launch(platform: RunningPlatform) -> None:
    with platform.client(VIEWER_TOKEN) as client:
        location = client.post("/graphql", json={"query": "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"})
        name = location.json()["data"]["workspaceOrError"]["locationEntries"][0]["name"]
        params = {
            "selector": {"repositoryLocationName": name, "repositoryName": "__repository__", "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": ["team_status"]}]},
            "runConfigData": {},
        }
        refused = client.post("/graphql", json={"query": LAUNCH, "variables": {"executionParams": params}}).json()
    assert refused.get("errors") and "reader" in str(refused["errors"]), refused


def test_the_ui_shows_problems_outputs_checks_records_and_audit(platform: RunningPlatform) -> None:
    from playwright.sync_api import expect, sync_playwright

    _viewer_tries_to_launch(platform)
    # team_status runs every 30 s and has output checks: wait for an execution that carried them.
    _wait(lambda: any(e["status"] == "succeeded" for e in _executions(platform, task="team_status")), READY_S, "a team_status execution")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

        # Sign in once with the token; the gate sets a cookie and the UI works from then on.
        page.goto(f"{platform.url}/?token={ADMIN_TOKEN}")
        expect(page.get_by_text("Overview").first).to_be_visible()

        # Catalog problems: the broken spec on the catalog asset, with its file and field.
        page.goto(f"{platform.url}/assets/agent_catalog")
        expect(page.get_by_text("nightly_audit").first).to_be_visible()
        expect(page.get_by_text("schedule").first).to_be_visible()
        shot("catalog_problems")

        # The task's latest output and its check results.
        page.goto(f"{platform.url}/assets/team_status")
        expect(page.get_by_text("Write the status of the research team", exact=False).first).to_be_visible()
        shot("asset_latest_output")
        page.goto(f"{platform.url}/assets/team_status?view=checks")
        expect(page.get_by_text("json_schema").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Failed|Passed|Warning")).first).to_be_visible()
        shot("asset_checks")

        # Execution records, filtered as a user would.
        page.goto(f"{platform.url}/ops/executions?task=team_status")
        expect(page.locator("table").get_by_text("team_status").first).to_be_visible()
        expect(page.locator("table").get_by_text("succeeded").first).to_be_visible()
        shot("execution_records")

        # The audit log: the viewer's refused launch, the policy and the catalog as loaded.
        page.goto(f"{platform.url}/ops/audit")
        expect(page.get_by_text("Hash chain intact", exact=False)).to_be_visible()
        denied = page.locator("tr", has_text="reader").filter(has_text="denied")
        expect(denied.first).to_be_visible()
        expect(page.get_by_text("catalog.change").first).to_be_visible()
        shot("audit_log")
        browser.close()
