"""The daemon lease on real PostgreSQL: one holder at a time, a dead holder's lock free at once,
a partitioned holder fenced before the server lets anyone else in, every term recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agent_pipelines.failover import DAEMON_ROLE, LeaseTiming, PostgresLease
from agent_pipelines.local_platform import wait_until
from agent_pipelines.store import StateStore
from tests.support.tcp_proxy import PartitionProxy


@pytest.fixture
def store(postgres_url: str) -> StateStore:
    return StateStore.for_url(postgres_url)


@pytest.fixture
def proxy(postgres_server_url: str) -> Iterator[PartitionProxy]:
    host_port = postgres_server_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    running = PartitionProxy(host, int(port))
    yield running
    running.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_and_a_dead_holders_lock_is_free_at_once(store: StateStore, postgres_url: str) -> None:
    first = PostgresLease(postgres_url, DAEMON_ROLE, "first")
    second = PostgresLease(postgres_url, DAEMON_ROLE, "second")
    try:
        term = first.try_acquire()
        assert term is not None and first.valid() == term
        assert second.try_acquire() is None
        assert second.try_acquire() is None  # asking again from the same session changes nothing
        first.lost()  # its session ends, as when its process is killed
        # the server ends the dead session's backend (and frees its lock) once it reads the
        # closed socket: milliseconds, more on a loaded machine
        deadline = time.monotonic() + 10
        while (taken := second.try_acquire()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert taken is not None and taken > term
        second.release("handing over")
        terms = store.leadership_terms(DAEMON_ROLE)
        assert [(t.holder, t.reason is not None) for t in terms] == [("second", True), ("first", False)]
        assert terms[0].released_at is not None and terms[1].released_at is None  # the dead holder never said goodbye
    finally:
        first.close()
        second.close()


def test_other_roles_and_databases_do_not_share_a_lease(store: StateStore, postgres_url: str) -> None:
    daemon = PostgresLease(postgres_url, DAEMON_ROLE, "a")
    other = PostgresLease(postgres_url, "another-role", "b")
    try:
        assert daemon.try_acquire() is not None
        assert other.try_acquire() is not None
    finally:
        daemon.close()
        other.close()


def test_validity_ends_fence_after_s_after_the_last_proof(store: StateStore, postgres_url: str) -> None:
    clock = FakeClock()
    timing = LeaseTiming()
    lease = PostgresLease(postgres_url, DAEMON_ROLE, "clocked", timing, clock=clock)
    try:
        term = lease.try_acquire()
        clock.now += timing.fence_after_s - 0.01
        assert lease.valid() == term
        lease.check()
        clock.now += timing.fence_after_s - 0.01
        assert lease.valid() == term
        clock.now += 0.02
        assert lease.valid() is None  # unproven too long: whoever holds it must stop now
    finally:
        lease.close()


def test_unsafe_timing_is_refused() -> None:
    with pytest.raises(ValueError, match="server_gives_up_s"):
        LeaseTiming(fence_after_s=5.0, check_every_s=1.0, server_gives_up_s=6.0)
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        PostgresLease("sqlite:///x.db", DAEMON_ROLE, "x")


def test_a_partitioned_holder_is_fenced_before_the_server_lets_a_standby_in(
    store: StateStore, postgres_url: str, proxy: PartitionProxy
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    timing = LeaseTiming()
    cut_off = PostgresLease(proxy.url(database), DAEMON_ROLE, "cut-off", timing)
    standby = PostgresLease(postgres_url, DAEMON_ROLE, "standby", timing)
    try:
        assert cut_off.try_acquire() is not None
        proxy.partition(server_notices_after_s=timing.server_gives_up_s)

        # The holder's check hangs on the silent network; its validity runs out regardless.
        stuck = threading.Thread(target=lambda: _check_quietly(cut_off), daemon=True)
        stuck.start()
        wait_until(lambda: cut_off.valid() is None, timeout_s=30, interval_s=0.05, message="the holder fenced")
        fenced_at = time.monotonic()
        cut_off.abandon()
        stuck.join(10)
        assert not stuck.is_alive(), "abandon() did not free the stuck check"

        # The standby gets the lock only once the server has given up on the old session.
        wait_until(lambda: standby.try_acquire() is not None, timeout_s=60, interval_s=0.2, message="the standby taking over")
        taken_at = time.monotonic()
        assert fenced_at < taken_at
    finally:
        proxy.heal()
        cut_off.close()
        standby.close()


def _check_quietly(lease: PostgresLease) -> None:
    try:
        lease.check()
    except Exception:  # noqa: BLE001 - expected once abandoned
        pass
