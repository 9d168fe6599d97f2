"""Shared fixtures: real demo-agent servers on 127.0.0.1, real SQLite and PostgreSQL instances.

PostgreSQL tests never skip: when the server at $AGENT_PIPELINES_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test) is unreachable they fail, so CI cannot go green
without having exercised it.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agent_pipelines.demo_agent import DemoAgentConfig, RunningDemoAgent, run_in_thread
from agent_pipelines.instance import POSTGRES_URL_ENV, initialize_storage, instance_yaml
from agent_pipelines.store import sqlalchemy_url

TEST_TOKEN = "test-token"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "AGENT_PIPELINES_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)



def _starts_a_daemon(item: pytest.Item) -> bool:
    return item.get_closest_marker("daemon") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the tests that start a real dagster-daemon first: they are the longest chain."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: not _starts_a_daemon(item))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs two pytest-xdist workers (`--dist loadscope`). The modules whose tests
    start a real dagster-daemon are one unit of work: they load the machine and wait on the wall
    clock, so they run one after another on one worker while the other takes the rest a module
    at a time (a module's fixtures, a gateway or a browser, start once). xdist's own
    `xdist_group` marks cannot do this under pytest 9: it rewrites node ids pytest no longer reads."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    tests = Path(__file__).parent
    daemon_files = {f"tests/{path.name}" for path in tests.glob("test_*.py") if "mark.daemon" in path.read_text()}

    class DaemonModulesInOneLine(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "daemon" if path in daemon_files else path

    return DaemonModulesInOneLine(config, log)


@pytest.fixture
def demo_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningDemoAgent]:
    monkeypatch.setenv("DEMO_AGENT_TOKEN", TEST_TOKEN)
    with run_in_thread(DemoAgentConfig(token=TEST_TOKEN)) as agent:
        yield agent


def demo_agent_command(port: int) -> list[str]:
    """argv of a demo agent process answering at once on `port` (what a lifecycle starts)."""
    return [sys.executable, "-m", "agent_pipelines.cli", "demo-agent", "--port", str(port), "--latency-ms", "1", "--jitter-ms", "0"]


def write_catalog(directory: Path, agent_url: str, tasks_yaml: str, extra_agents: str = "") -> Path:
    """A catalog with agents `demo` (openai_chat), `claw` (openclaw), `hermes` on `agent_url`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agents.yaml").write_text(
        textwrap.dedent(
            f"""\
            agents:
              - name: demo
                kind: openai_chat
                base_url: {agent_url}
                auth_env: DEMO_AGENT_TOKEN
                model: demo-model
                timeout: 5s
              - name: claw
                kind: openclaw
                base_url: {agent_url}
                auth_env: DEMO_AGENT_TOKEN
                timeout: 5s
              - name: hermes
                kind: hermes
                base_url: {agent_url}
                auth_env: DEMO_AGENT_TOKEN
                timeout: 5s
            """
        )
        + textwrap.indent(textwrap.dedent(extra_agents), "  ")
    )
    (directory / "tasks.yaml").write_text(textwrap.dedent(tasks_yaml))
    return directory


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A real SQLite Dagster instance in a fresh DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The admin URL; fails loudly when PostgreSQL is not reachable."""
    engine = sa.create_engine(sqlalchemy_url(POSTGRES_ADMIN_URL))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests and unreachable at {POSTGRES_ADMIN_URL}: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"ap_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sqlalchemy_url(postgres_server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = postgres_server_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from agent_pipelines.store import StateStore

        for cached_url, store in list(StateStore._instances.items()):
            if cached_url == url:
                store.engine.dispose()
                del StateStore._instances[cached_url]
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dagster_home(tmp_path: Path, storage: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME with the same dagster.yaml `make run` writes, on SQLite or PostgreSQL."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    use_postgres = storage == "postgres"
    if use_postgres:
        monkeypatch.setenv(POSTGRES_URL_ENV, request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    initialize_storage(home)  # before a daemon and the test open it side by side
    return home


def sensor_context(instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorEvaluationContext:
    """A sensor context with the project's resources, as the daemon provides them."""
    from resources import StoreResource

    return dg.build_sensor_context(instance=instance, cursor=cursor, resources={"store": StoreResource()})
