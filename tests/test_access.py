"""The access policy as pure functions: validation with file, line and field; decisions per
role, team and task glob; what each GraphQL mutation touches; what an event source may start."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent_pipelines.access.decisions import Role, TaskRef, can, may_change_anything, may_view
from agent_pipelines.access.events import EventAccess
from agent_pipelines.access.graphql_mutations import (
    MUTATIONS,
    UnreadableRequest,
    has_mutation,
    judge,
    mutation_calls,
)
from agent_pipelines.access.identity import Identity, Unauthenticated, identify
from agent_pipelines.access.policy import Policy, PolicyError, PolicySource, load_policy
from agent_pipelines.catalog.model import TaskSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VIEWER_TOKEN = "viewer-token"
POLICY = f"""\
users:
  vera: {{tokens: [{{sha256: {hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()}}}]}}
  olga: {{groups: [alpha-ops], tokens: [{{token_env: OLGA_TOKEN}}]}}
  ada: {{}}
groups:
  beta-owners: [Bea@Example.com]
grants:
  - {{role: viewer, groups: ["*"]}}
  - {{role: operator, groups: [alpha-ops], team: alpha}}
  - {{role: owner, groups: [beta-owners], team: beta, tasks: "beta_*"}}
  - {{role: admin, users: [ada]}}
sources:
  hooks: {{teams: [alpha], tasks: ["alpha_*"]}}
trusted_proxies: [10.0.0.0/8]
"""

ALPHA = TaskRef("alpha_digest", "team:alpha")
BETA = TaskRef("beta_digest", "team:beta")
BETA_OTHER = TaskRef("other_report", "team:beta")


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Policy:
    monkeypatch.setenv("OLGA_TOKEN", "olga-secret")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(path)


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(PolicyError) as caught:
        load_policy(path, environ={})
    return caught.value.problems


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grants:\n  - {role: operator, users: [a]}\n  - {role: superuser, users: [b]}\n", ":3: grants.1.role: Input should be 'viewer', 'operator', 'owner' or 'admin'"),
        ("grants:\n  - role: viewer\n    team: alpha\n", ":2: grants.0: a grant needs `users` or `groups`"),
        ("users:\n  bob:\n    token: hunter2\n", ":3: users.bob: plaintext `token` is not allowed"),
        ("users:\n  bob:\n    tokens:\n      - {sha256: nothex}\n", ":4: users.bob.tokens.0.sha256: must be 64 hex digits"),
        ("users:\n  bob:\n    tokens:\n      - {}\n", ":4: users.bob.tokens.0: set exactly one of `sha256` and `token_env`"),
        ("grants:\n  - {role: viewer, users: [a], tasks: '*', teams: x}\n", ":2: grants.0.teams: unknown field 'teams'"),
        ("trusted_proxies: [not-an-address]\n", ":1: trusted_proxies: 'not-an-address' is not an IP address or network"),
        ("sources:\n  ci: {teams: [a]}\n", ":2: sources.ci.tasks: required field is missing"),
        ("grants: [\n", "invalid YAML"),
    ],
)
def test_policy_problems_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p and str(tmp_path / "policy.yaml") in p for p in problems), problems


def test_one_token_for_two_users_is_refused(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"shared").hexdigest()
    problems = _problems(tmp_path, f"users:\n  a: {{tokens: [{{sha256: {digest}}}]}}\n  b:\n    tokens: [{{sha256: {digest}}}]\n")
    assert len(problems) == 1 and ":4: users.b.tokens.0: the same token is also given to 'a'" in problems[0]


def test_example_policy_matches_the_example_catalog() -> None:
    from agent_pipelines.catalog.loader import load_catalog

    policy = load_policy(PROJECT_ROOT / "deploy" / "policy.yaml", environ={})
    catalog = load_catalog(PROJECT_ROOT / "catalog")
    teams = {task.owner.removeprefix("team:") for task in catalog.tasks.values()}
    granted = {grant.team for grant in policy.spec.grants}
    assert teams <= granted, f"teams without a grant in deploy/policy.yaml: {teams - granted}"
    assert policy.user_for_token("demo-viewer-token") == "carol@example.com"
    assert set(policy.spec.sources) <= set(catalog.sources)
    assert policy.missing_token_envs == ("AGENT_PIPELINES_TOKEN_ALICE", "AGENT_PIPELINES_TOKEN_BOB", "AGENT_PIPELINES_TOKEN_ADMIN")


# --- decisions ---------------------------------------------------------------------------------


def _who(name: str, *groups: str) -> Identity:
    return Identity(name, tuple(groups))


@pytest.mark.parametrize(
    ("who", "action", "task", "allowed"),
    [
        (_who("vera"), "view", ALPHA, True),
        (_who("vera"), "ui.launch", ALPHA, False),  # a viewer cannot launch
        (_who("olga"), "ui.launch", ALPHA, True),  # operator of team alpha
        (_who("olga"), "task.pause", ALPHA, True),
        (_who("olga"), "ui.launch", BETA, False),  # ... not of team beta
        (_who("olga"), "prompt.promote", ALPHA, False),  # promoting needs owner
        (_who("bea@example.com"), "prompt.promote", BETA, True),  # group membership, case-insensitive
        (_who("bea@example.com"), "ui.launch", BETA_OTHER, False),  # outside the task glob: viewer only
        (_who("sso-user", "beta-owners"), "ui.launch", BETA, True),  # groups from the SSO proxy
        (_who("olga"), "ui.wipeAssets", ALPHA, False),  # unknown actions need admin
        (_who("ada"), "ui.wipeAssets", BETA, True),
        (_who("ada"), "ui.launch", None, True),  # admin on every task
        (_who("olga"), "ui.launch", None, False),  # tasks unknown: admin only
        (_who("stranger"), "view", ALPHA, True),  # "*": anyone signed in may view
    ],
)
def test_decisions_per_role_team_and_glob(policy: Policy, who: Identity, action: str, task: TaskRef | None, allowed: bool) -> None:
    decision = can(policy, who, action, task)
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert who.name in decision.reason and decision.needed.name in decision.reason


def test_denial_message_names_task_team_and_roles(policy: Policy) -> None:
    decision = can(policy, _who("olga"), "ui.launch", BETA)
    assert decision.reason == "olga may not ui.launch on task 'beta_digest' (team beta): it needs operator and olga is only viewer there"


def test_without_a_policy_everything_is_allowed() -> None:
    assert can(None, _who("anyone"), "ui.wipeAssets", None).allowed
    assert may_view(None, _who("anyone")) and may_change_anything(None, _who("anyone"))


def test_viewers_see_a_read_only_ui(policy: Policy) -> None:
    assert may_view(policy, _who("vera")) and not may_change_anything(policy, _who("vera"))
    assert may_change_anything(policy, _who("olga"))
    empty = Policy(spec=policy.spec.model_copy(update={"grants": []}))
    assert not may_view(empty, _who("vera"))


# --- identities --------------------------------------------------------------------------------


def _scope(client: str, **headers: str) -> dict[str, Any]:
    return {"client": (client, 5555), "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def test_identity_from_token_cookie_and_trusted_proxy_only(policy: Policy) -> None:
    assert identify(_scope("127.0.0.1", authorization=f"Bearer {VIEWER_TOKEN}"), policy).name == "vera"
    cookie = identify(_scope("127.0.0.1", cookie="x=1; agent_pipelines_token=olga-secret"), policy)
    assert (cookie.name, cookie.groups, cookie.via, cookie.method) == ("olga", ("alpha-ops",), "ui", "cookie")
    proxied = identify(_scope("10.1.2.3", x_forwarded_user="sso-user", x_forwarded_groups="beta-owners, x", x_forwarded_for="192.0.2.7"), policy)
    assert (proxied.name, proxied.groups, proxied.origin) == ("sso-user", ("beta-owners", "x"), "192.0.2.7 via 10.1.2.3")
    with pytest.raises(Unauthenticated, match="not a trusted proxy"):
        identify(_scope("192.0.2.9", x_forwarded_user="ada"), policy)
    with pytest.raises(Unauthenticated, match="matches no user"):
        identify(_scope("10.1.2.3", authorization="Bearer wrong", x_forwarded_user="ada"), policy)  # no fallback
    with pytest.raises(Unauthenticated, match="no credentials"):
        identify(_scope("127.0.0.1"), policy)


# --- GraphQL mutations -------------------------------------------------------------------------


class FakeTargets:
    """Targets over a fixed catalog: assets are task names, jobs and runs listed here."""

    tasks: ClassVar[dict[str, TaskRef]] = {t.name: t for t in (ALPHA, BETA, BETA_OTHER)}
    jobs: ClassVar[Mapping[str, list[tuple[str, ...]]]] = {"alpha_job": [("alpha_digest",)], "mixed_job": [("alpha_digest",), ("beta_digest",)], "op_job": []}
    runs: ClassVar[Mapping[str, list[TaskRef] | None]] = {"run-a": [ALPHA], "run-b": [BETA], "run-x": None}

    def tasks_of_assets(self, keys: Sequence[tuple[str, ...]]) -> list[TaskRef] | None:
        found = [self.tasks.get(k[0]) if len(k) == 1 else None for k in keys]
        return None if not found or None in found else sorted(set(found))  # type: ignore[arg-type]

    def assets_of_job(self, location: str | None, repository: str | None, job: str) -> list[tuple[str, ...]] | None:
        return self.jobs.get(job) or None

    def tasks_of_run(self, run_id: str) -> list[TaskRef] | None:
        return self.runs.get(run_id)

    def tasks_of_backfill(self, backfill_id: str) -> list[TaskRef] | None:
        return [BETA] if backfill_id == "bf-b" else None

    def tasks_of_instigator(self, kind: str, selector: Mapping[str, Any] | None, instigator_id: str | None) -> list[TaskRef] | None:
        name = (selector or {}).get("scheduleName") or (selector or {}).get("sensorName")
        return [ALPHA] if name == "alpha_schedule" or instigator_id == "alpha-origin" else None

    def tasks_of_partitions_def(self, name: str) -> list[TaskRef] | None:
        return None


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) { __typename }
}
"""


def _params(job: str, assets: list[str] | None = None) -> dict[str, Any]:
    selector: dict[str, Any] = {"repositoryLocationName": "loc", "repositoryName": "__repository__", "jobName": job}
    if assets is not None:
        selector["assetSelection"] = [{"path": [a]} for a in assets]
    return {"selector": selector, "runConfigData": {}, "executionMetadata": {"tags": [{"key": "agent_pipelines/task", "value": "alpha_digest"}]}}


def _touches(query: str, variables: dict[str, Any] | None = None) -> list[tuple[str, Role, list[str] | None]]:
    return [
        (t.action, t.role, None if t.tasks is None else [x.name for x in t.tasks])
        for t in (judge(call, FakeTargets()) for call in mutation_calls(query, variables))
    ]


@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        ("{ version }", None, []),
        ("query Q { runsOrError { __typename } }", None, []),
        (LAUNCH, {"params": _params("__ASSET_JOB", ["beta_digest"])}, [("ui.launch", Role.operator, ["beta_digest"])]),
        (LAUNCH, {"params": _params("mixed_job")}, [("ui.launch", Role.operator, ["alpha_digest", "beta_digest"])]),
        # Client tags never decide: an op job's tasks are unknown, so admin.
        (LAUNCH, {"params": _params("op_job")}, [("ui.launch", Role.operator, None)]),
        (LAUNCH, {"params": _params("__ASSET_JOB", ["agents", "demo"])}, [("ui.launch", Role.operator, None)]),
        (
            (
                'mutation { a: launchRun(executionParams: {selector: {repositoryLocationName: "l", repositoryName: "r", jobName: "alpha_job"}}) '
                '{ __typename } b: terminateRun(runId: "run-b") { __typename } }'
            ),
            None,
            [("ui.launch", Role.operator, ["alpha_digest"]), ("ui.terminateRun", Role.operator, ["beta_digest"])],
        ),
        (
            "mutation M { ...F } fragment F on Mutation { deleteRun(runId: \"run-a\") { __typename } }",
            None,
            [("ui.deleteRun", Role.admin, ["alpha_digest"])],
        ),
        (
            "mutation { launchRunReexecution(reexecutionParams: {parentRunId: \"run-b\", strategy: ALL_STEPS}) { __typename } }",
            None,
            [("ui.launchRunReexecution", Role.operator, ["beta_digest"])],
        ),
        ('mutation { terminateRuns(runIds: ["run-a", "run-x"]) { __typename } }', None, [("ui.terminateRuns", Role.operator, None)]),
        ('mutation { cancelPartitionBackfill(backfillId: "bf-b") { __typename } }', None, [("ui.cancelPartitionBackfill", Role.operator, ["beta_digest"])]),
        (
            (
                'mutation { stopRunningSchedule(scheduleOriginId: "alpha-origin") { __typename } '
                'startSensor(sensorSelector: {repositoryLocationName: "l", repositoryName: "r", sensorName: "task_scheduler_sensor"}) { __typename } }'
            ),
            None,
            [("ui.stopRunningSchedule", Role.owner, ["alpha_digest"]), ("ui.startSensor", Role.owner, None)],
        ),
        (
            'mutation { wipeAssets(assetPartitionRanges: [{assetKey: {path: ["alpha_digest"]}}]) { __typename } }',
            None,
            [("ui.wipeAssets", Role.admin, ["alpha_digest"])],
        ),
        (
            'mutation { reportRunlessAssetEvents(eventParams: {eventType: MATERIALIZATION, assetKey: {path: ["beta_digest"]}}) { __typename } }',
            None,
            [("ui.reportRunlessAssetEvents", Role.owner, ["beta_digest"])],
        ),
        ("mutation { reloadWorkspace { __typename } }", None, [("ui.reloadWorkspace", Role.operator, None)]),
        ("mutation { someFutureMutation { __typename } }", None, [("ui.someFutureMutation", Role.admin, None)]),
    ],
)
def test_what_each_mutation_touches(query: str, variables: dict[str, Any] | None, expected: list) -> None:
    assert _touches(query, variables) == expected


def test_every_mutation_of_the_installed_schema_is_mapped() -> None:
    from dagster_graphql.schema import create_schema

    schema_mutations = set(create_schema().graphql_schema.mutation_type.fields)
    assert schema_mutations - set(MUTATIONS) == set(), "new Dagster mutations: map them in graphql_mutations.MUTATIONS"


def test_unreadable_documents_are_refused() -> None:
    with pytest.raises(UnreadableRequest):
        mutation_calls("mutation { launchRun(", None)
    assert has_mutation("mutation { setNuxSeen }") and has_mutation("mutation {") and not has_mutation("subscription { x }")


# --- event sources -----------------------------------------------------------------------------


def _task(name: str, owner: str, **match: Any) -> TaskSpec:
    return TaskSpec(name=name, owner=owner, agent="a", prompt="p", events=[{"source": "hooks", "type": "push", "match": match}])


def test_a_source_may_only_start_the_tasks_it_is_granted(policy: Policy) -> None:
    tasks = [_task("alpha_build", "alpha", repo="a"), _task("beta_deploy", "beta", repo="b"), _task("alpha_other", "beta", repo="a")]
    access = EventAccess(store=None, policy=lambda: policy, subscribed=lambda source: tasks if source == "hooks" else [])
    assert access.denied_tasks("hooks", "push", {"repo": "a"}) == ["alpha_other"]  # owner beta: not granted
    assert access.denied_tasks("hooks", "push", {"repo": "b"}) == ["beta_deploy"]
    assert access.denied_tasks("hooks", "tag", {"repo": "b"}) == []  # starts nothing
    granted = [tasks[0]]
    assert EventAccess(None, lambda: policy, lambda s: granted).denied_tasks("hooks", "push", {"repo": "a"}) == []
    assert EventAccess(None, lambda: None, lambda s: tasks).denied_tasks("hooks", "push", {"repo": "b"}) == []


def test_policy_changes_are_noticed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("grants:\n  - {role: viewer, users: [a]}\n")
    changes: list[tuple[str | None, str]] = []
    now = [0.0]
    source = PolicySource(path, min_interval_s=1.0, clock=lambda: now[0], on_change=lambda old, new: changes.append((old and old.digest, new.digest)))
    first = source().digest
    path.write_text("grants:\n  - {role: admin, users: [a]}\n")
    assert source().digest == first  # not re-checked within the interval
    now[0] = 2.0
    second = source().digest
    path.write_text("grants: [oops\n")  # a broken edit keeps the policy in force
    now[0] = 4.0
    assert source().digest == second and source.error is not None
    assert changes == [(None, first), (first, second)]
