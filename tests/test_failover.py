"""Daemon failover with real daemons on PostgreSQL: two `agent-pipelines daemon` wrappers, one
running `dagster-daemon`. The active one is SIGKILLed (at aligned and random moments) and the
standby takes over; one wrapper is cut off from PostgreSQL by a partition and fences itself
before the other may start. Throughout, every due time is delivered exactly once, never early,
and Dagster never sees two daemons."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_pipelines.chaos import absent, account, rows_of, sleep_until_aligned, unsettled
from agent_pipelines.failover import DAEMON_ROLE
from agent_pipelines.instance import POSTGRES_URL_ENV, instance_yaml
from agent_pipelines.local_platform import Platform, children_of, wait_until
from agent_pipelines.store import StateStore, status
from tests.conftest import write_catalog
from tests.support.tcp_proxy import PartitionProxy

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(900)]

STEP_S = 2.0
TASKS = [f"beat_{i:02d}" for i in range(20)]
CATALOG = "tasks:\n" + "".join(
    f"  - {{name: {name}, owner: ops, agent: demo, prompt: 'beat {{{{ due_time.isoformat() }}}}', "
    "schedule: {every: 2s}, misfire: {policy: all, grace: 10m, max_catchup: 1000}}\n"
    for name in TASKS
)
TWO_DAEMONS = "daemon is still sending heartbeats"  # what Dagster logs when two daemons run


@pytest.fixture
def proxy(postgres_server_url: str) -> Iterator[PartitionProxy]:
    host, port = postgres_server_url.split("@", 1)[1].split("/", 1)[0].split(":")
    running = PartitionProxy(host, int(port))
    yield running
    running.close()


@pytest.fixture
def platform(tmp_path: Path, demo_agent, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres=True))
    catalog = write_catalog(tmp_path / "catalog", demo_agent.url, CATALOG)
    running = Platform(home, catalog, demo_agent, tmp_path)
    yield running
    running.stop()


def _active(store: StateStore) -> tuple[int, str]:
    term = store.leadership_terms(DAEMON_ROLE, limit=1)[0]
    return term.term, term.holder.rsplit("(", 1)[1].rstrip(")")


def _daemon_of(p: Platform, name: str) -> list[int]:
    wrapper = p.wrappers[name]
    return children_of(wrapper.pid) if wrapper.poll() is None else []


def _take_over(p: Platform, store: StateStore, kill: str, moment: str, rng: random.Random) -> None:
    """SIGKILL wrapper `kill` (active) at `moment`; wait for the other to lead; restart `kill`."""
    term, active = _active(store)
    assert active == kill
    if moment == "aligned":
        sleep_until_aligned(STEP_S, before_s=0.08)
    else:
        time.sleep(rng.uniform(0, STEP_S))
    p.wrappers[kill].send_signal(signal.SIGKILL)
    p.wrappers[kill].wait(10)
    wait_until(lambda: _active(store)[0] > term, timeout_s=60, interval_s=0.2, message=f"a standby taking over from {kill}")
    new_term, leader = _active(store)
    assert leader != kill
    wait_until(lambda: bool(_daemon_of(p, leader)), timeout_s=30, message=f"{leader} starting dagster-daemon")
    p.restart_wrapper(kill)


def test_kills_and_a_partition_lose_nothing_and_double_nothing(
    platform: Platform, postgres_url: str, proxy: PartitionProxy
) -> None:
    p = platform
    store = p.store()
    p.start_code_server()
    p.start_wrapper("solid")
    wait_until(lambda: bool(store.leadership_terms(DAEMON_ROLE)), timeout_s=60, message="a first term")
    p.start_wrapper("cut", **{POSTGRES_URL_ENV: proxy.url(postgres_url.rsplit("/", 1)[1])})
    wait_until(lambda: len(p.agent.requests()) >= 40, timeout_s=240, message=f"steady firing\n{p.wrapper_log('solid')}")
    start = time.time() + STEP_S
    rng = random.Random(5)

    # Kills at aligned and random moments; each time the other wrapper takes over.
    for moment in ("aligned", "random", "aligned"):
        _term, active = _active(store)
        _take_over(p, store, active, moment, rng)
        time.sleep(6)
    # The partition: make `cut` the leader, then cut it off from PostgreSQL.
    if _active(store)[1] != "cut":
        _take_over(p, store, "solid", "random", rng)
    assert _active(store)[1] == "cut"
    cut_daemon = _daemon_of(p, "cut")
    assert cut_daemon
    term_before = _active(store)[0]
    proxy.partition(server_notices_after_s=6.0)
    wait_until(lambda: "fenced" in p.wrapper_log("cut"), timeout_s=30, message=f"the cut-off leader fencing itself\n{p.wrapper_log('cut')}")
    assert not _daemon_of(p, "cut"), "the cut-off wrapper still runs a daemon"
    wait_until(lambda: _active(store)[0] > term_before, timeout_s=60, message=f"solid taking over\n{p.wrapper_log('solid')}")
    assert _active(store)[1] == "solid"
    time.sleep(8)
    proxy.heal()
    time.sleep(8)
    assert not _daemon_of(p, "cut"), "the healed old leader started a second daemon"
    assert _active(store)[1] == "solid"
    end = time.time()

    wait_until(
        lambda: time.time() > end + 5 and not unsettled(store, end) and not absent(store, TASKS, start, end, STEP_S),
        timeout_s=240,
        message="every due time settled",
    )
    result = account(rows_of(store, TASKS), p.agent.requests(), TASKS, start, end, STEP_S)
    logs = "\n".join(p.wrapper_log(name) for name in ("solid", "cut"))
    detail = f"{result.summary()}; never: {result.never_by_state()}\n{logs[-4000:]}"
    print(detail.splitlines()[0])
    assert result.twice == [] and result.early == [], detail
    assert [d for d in result.never if d.status != status.UNKNOWN] == [], detail
    assert TWO_DAEMONS not in logs, "Dagster saw two daemons at once"
    assert len(store.leadership_terms(DAEMON_ROLE, limit=50)) >= 5  # the first, 3 kills, the partition


def test_failover_is_refused_on_sqlite(tmp_path: Path, demo_agent) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
    catalog = write_catalog(tmp_path / "catalog", demo_agent.url, CATALOG)
    p = Platform(home, catalog, demo_agent, tmp_path)
    wrapper = p.start_wrapper("lonely")
    assert wrapper.wait(60) != 0
    log = p.wrapper_log("lonely")
    assert "daemon failover needs PostgreSQL" in log and "SQLite" in log, log
