"""The access gate in front of the real Dagster webserver (its own ASGI app, served by uvicorn
on a free port, with a real SQLite instance and the catalog of two teams), the CLI's checks and
the ingress's: who may launch what, how a refusal looks, and that every refusal is audited."""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from click.testing import CliRunner

from agent_pipelines.http_server import RunningServer, serve_in_thread
from agent_pipelines.instance import instance_yaml
from agent_pipelines.store import StateStore
from tests.conftest import write_catalog

TOKENS = {"viewer": "t-viewer", "op_alpha": "t-op-alpha", "admin": "t-admin"}
TASKS = """\
sources:
  - {name: hooks, auth: {kind: bearer, token_env: GATE_HOOKS_TOKEN}}
tasks:
  - {name: alpha_digest, owner: alpha, agent: demo, prompt: "alpha", schedule: "0 9 * * *"}
  - {name: alpha_on_push, owner: alpha, agent: demo, prompt: "push", events: [{source: hooks, type: push, match: {repo: alpha}}]}
  - {name: beta_digest, owner: beta, agent: demo, prompt: "beta", schedule: "0 9 * * *"}
  - {name: beta_on_push, owner: beta, agent: demo, prompt: "push", events: [{source: hooks, type: push, match: {repo: beta}}]}
"""
TRUSTED_PROXY = "127.0.0.2"  # the test connects from it to play the SSO proxy


def _policy() -> str:
    users = "\n".join(
        f"  {name}: {{groups: [{'alpha-ops' if name == 'op_alpha' else 'staff'}], tokens: [{{sha256: {hashlib.sha256(token.encode()).hexdigest()}}}]}}"
        for name, token in TOKENS.items()
    )
    return f"""\
users:
{users}
grants:
  - {{role: viewer, groups: [staff, alpha-ops, sso-readers]}}
  - {{role: operator, groups: [alpha-ops], team: alpha}}
  - {{role: admin, users: [admin]}}
sources:
  hooks: {{teams: [alpha], tasks: ["alpha_*"]}}
trusted_proxies: [{TRUSTED_PROXY}]
"""


@dataclass
class Gate:
    server: RunningServer
    home: Path
    store: StateStore
    instance: dg.DagsterInstance
    location: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def denials(self, action: str) -> list:
        return self.store.audit_entries(action=action, outcome="denied", limit=100)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_webserver.version import __version__

    from agent_pipelines.access.serving import policy_provider
    from agent_pipelines.commands.webserver import build_gated_app, gated_process_context_class
    from agent_pipelines.ingress import CatalogSources

    root = tmp_path_factory.mktemp("gate")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))  # queued run coordinator
    catalog = write_catalog(root / "catalog", "http://127.0.0.1:9", TASKS)
    (root / "policy.yaml").write_text(_policy())
    # A code location of this catalog loaded in this process (a file: never a cached module).
    (root / "defs.py").write_text(textwrap.dedent(f"""\
        from agent_pipelines.catalog.loader import load_catalog
        from agent_pipelines.composition import build_definitions
        defs = build_definitions(load_catalog({str(catalog)!r}))
        """))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("AGENT_PIPELINES_CATALOG", str(catalog))
        env.setenv("AGENT_PIPELINES_POLICY", str(root / "policy.yaml"))
        env.setenv("GATE_HOOKS_TOKEN", "hooks-token")
        env.delenv("AGENT_PIPELINES_POSTGRES_URL", raising=False)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            store = StateStore.for_instance(instance)
            origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=str(root / "defs.py"), working_directory=str(root)))
            context_class = gated_process_context_class()
            with context_class(instance, version=__version__, read_only=False, workspace_load_target=InProcessWorkspaceLoadTarget([origin])) as context:
                app = build_gated_app(context, store, policy_provider(store, "webserver", min_interval_s=0), CatalogSources(catalog).catalog)
                with serve_in_thread(app, name="gate", proxy_headers=False) as server:
                    yield Gate(server, home, store, instance, origin.location_name)


LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""


def _launch(gate: Gate, client: httpx.Client, task: str) -> httpx.Response:
    selector = {
        "repositoryLocationName": gate.location, "repositoryName": "__repository__",
        "jobName": "agent_tasks_job", "assetSelection": [{"path": [task]}],
    }
    return client.post("/graphql", json={"query": LAUNCH, "variables": {"executionParams": {"selector": selector, "runConfigData": {}}}})


def _launched(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    result = response.json()["data"]["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 200, response.text  # a GraphQL error: the UI toasts it
    body = response.json()
    assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
    for word in words:
        assert word in body["errors"][0]["message"], body


def test_unauthenticated_requests_are_refused(gate: Gate) -> None:
    with gate.client() as anonymous:
        api = anonymous.post("/graphql", json={"query": "{ version }"})
        assert api.status_code == 401 and "Bearer" in api.headers["www-authenticate"]
        page = anonymous.get("/runs", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "<form method='post' action='/auth/login'>" in page.text
        assert anonymous.post("/graphql", json={"query": "{ version }"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert anonymous.get("/healthz").status_code == 200


def test_a_viewer_reads_but_cannot_launch(gate: Gate) -> None:
    with gate.client("viewer") as viewer:
        read = viewer.post("/graphql", json={"query": "{ version permissions { permission value } }"})
        assert read.status_code == 200 and read.json()["data"]["version"]
        permissions = {p["permission"]: p["value"] for p in read.json()["data"]["permissions"]}
        assert permissions["launch_pipeline_execution"] is False  # the UI greys out its buttons
        _refused(_launch(gate, viewer, "alpha_digest"), "viewer may not ui.launch on task 'alpha_digest'", "needs operator")
    assert not gate.instance.get_runs()
    (entry,) = [e for e in gate.denials("ui.launch") if e.actor == "viewer"]
    assert entry.target == "alpha_digest" and entry.via == "graphql" and entry.origin == "127.0.0.1"


def test_an_operator_launches_its_teams_tasks_only(gate: Gate) -> None:
    with gate.client("op_alpha") as operator:
        run_id = _launched(_launch(gate, operator, "alpha_digest"))
        _refused(_launch(gate, operator, "beta_digest"), "op_alpha may not ui.launch on task 'beta_digest' (team beta)")
        with gate.client("admin") as admin:
            beta_run = _launched(_launch(gate, admin, "beta_digest"))  # an admin can
        # Terminating is judged on the stored run's tasks, not on anything the caller says.
        terminate = operator.post("/graphql", json={"query": f'mutation {{ terminateRun(runId: "{beta_run}") {{ __typename }} }}'})
        _refused(terminate, "'beta_digest'")
    run = gate.instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.QUEUED
    allowed = gate.store.audit_entries(action="ui.launch", outcome="allowed", limit=10)
    assert {(e.actor, e.target) for e in allowed} == {("op_alpha", "alpha_digest"), ("admin", "beta_digest")}
    assert {e.target for e in gate.denials("ui.launch") if e.actor == "op_alpha"} == {"beta_digest"}
    assert [e.target for e in gate.denials("ui.terminateRun")] == ["beta_digest"]


def test_identity_headers_count_only_from_a_trusted_proxy(gate: Gate) -> None:
    headers = {"X-Forwarded-User": "sso-user", "X-Forwarded-Groups": "sso-readers"}
    with gate.client() as direct:  # from 127.0.0.1: not a trusted proxy
        assert direct.get("/auth/whoami", headers=headers).status_code == 401
    with gate.client(transport=httpx.HTTPTransport(local_address=TRUSTED_PROXY)) as proxy:
        whoami = proxy.get("/auth/whoami", headers={**headers, "X-Forwarded-For": "192.0.2.7"})
        assert whoami.status_code == 200 and whoami.json()["user"] == "sso-user" and whoami.json()["highest_role"] == "viewer"
        terminate = proxy.post("/graphql", headers=headers, json={"query": 'mutation { terminateRun(runId: "nope") { __typename } }'})
        _refused(terminate, "sso-user may not ui.terminateRun on every task")
    (entry,) = [e for e in gate.denials("ui.terminateRun") if e.actor == "sso-user"]
    assert entry.origin == TRUSTED_PROXY and entry.via == "ui"


def test_a_browser_signs_in_with_a_token_and_gets_a_cookie(gate: Gate) -> None:
    with gate.client(follow_redirects=False) as browser:
        login = browser.get("/runs?token=" + TOKENS["op_alpha"])
        assert login.status_code == 303 and login.headers["location"] == "/runs"
        assert "HttpOnly" in login.headers["set-cookie"] and "SameSite=Lax" in login.headers["set-cookie"]
        assert browser.get("/auth/whoami").json()["user"] == "op_alpha"
        # The cookie alone does not carry a change across sites: JSON and a same-host Origin only.
        # What a hostile page's <form method=post action=".../graphql?query=mutation..."> sends:
        forged = browser.post("/graphql", params={"query": "mutation { reloadWorkspace { __typename } }"}, data={"x": "1"})
        _refused(forged, "application/json")
        _refused(browser.post("/graphql?query=mutation%20%7B%20setNuxSeen%20%7D"), "application/json")
        cross = browser.post("/graphql", json={"query": "mutation { setNuxSeen }"}, headers={"Origin": "https://evil.example"})
        _refused(cross, "cross-site")
        assert browser.get("/graphql?query=mutation%20%7B%20setNuxSeen%20%7D", headers={"Content-Type": "application/json"}).json()["errors"]


def test_ops_pages_are_served_behind_the_gate(gate: Gate) -> None:
    with gate.client() as anonymous:
        assert anonymous.get("/ops/audit.json").status_code == 401
    with gate.client("viewer") as viewer:
        entries = viewer.get("/ops/audit.json")
        assert entries.status_code == 200 and entries.json()["entries"]
    changes = gate.store.audit_entries(action="policy.change", limit=5)
    assert len(changes) == 1 and changes[0].actor == "system:webserver" and changes[0].details["old_hash"] is None


def test_cli_refuses_a_pause_outside_the_users_grants(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_pipelines.cli import main

    monkeypatch.setenv("AGENT_PIPELINES_USER", "op_alpha")
    runner = CliRunner()
    denied = runner.invoke(main, ["task", "pause", "beta_digest", "--reason", "noisy"])
    assert denied.exit_code == 1, denied.output
    assert "access denied: op_alpha may not task.pause on task 'beta_digest' (team beta): it needs operator" in denied.output
    paused = runner.invoke(main, ["task", "pause", "alpha_digest"])
    assert paused.exit_code == 0, paused.output
    assert gate.store.paused_tasks() == {"alpha_digest"}
    (denial,) = gate.denials("task.pause")
    assert (denial.actor, denial.via, denial.target, denial.details["needed"]) == ("op_alpha", "cli", "beta_digest", "operator")
    (allowed,) = gate.store.audit_entries(action="task.pause", outcome="allowed", limit=5)
    assert allowed.target == "alpha_digest"


def test_ingress_refuses_events_for_tasks_not_granted_to_the_source(gate: Gate) -> None:
    from agent_pipelines.access.events import EventAccess
    from agent_pipelines.access.serving import policy_provider
    from agent_pipelines.ingress import CatalogSources, create_ingress_app

    sources = CatalogSources(os.environ["AGENT_PIPELINES_CATALOG"])
    access = EventAccess(gate.store, policy_provider(gate.store, "ingress"), sources.subscribed, batch_interval_s=3600)
    headers = {"Authorization": "Bearer hooks-token"}
    with serve_in_thread(create_ingress_app(sources, gate.store, access=access), name="ingress") as server, httpx.Client(base_url=server.url) as http:
        refused = http.post("/events/hooks", json={"type": "push", "repo": "beta"}, headers=headers)
        assert refused.status_code == 403 and "may not trigger task(s) beta_on_push" in refused.json()["error"]
        accepted = http.post("/events/hooks", json={"type": "push", "repo": "alpha"}, headers=headers)
        assert accepted.status_code == 202, accepted.text
    assert [e.type for e in gate.store.events_after(0, limit=10)] == ["push"]  # the refused one was not stored
    (denial,) = gate.denials("event.trigger")
    assert (denial.actor, denial.via, denial.target) == ("source:hooks", "ingress", "beta_on_push")
    access.close()  # flushes the batch of accepted deliveries
    (batch,) = gate.store.audit_entries(action="event.trigger", outcome="allowed", limit=5)
    assert batch.target == "hooks" and batch.details["events"] == 1
