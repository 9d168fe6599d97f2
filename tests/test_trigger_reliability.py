"""Triggers with a real `dagster-daemon`, real HTTP and real storage: every due time exactly
once, through a SIGKILL of the daemon, and a burst of events through a daemon restart."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from agent_pipelines.instance import instance_yaml
from agent_pipelines.scheduling.timing import parse_due
from tests.conftest import write_catalog
from agent_pipelines.local_platform import Platform, wait_until

pytestmark = pytest.mark.daemon
STEP = dt.timedelta(seconds=2)


@pytest.fixture
def platform(tmp_path: Path, demo_agent, monkeypatch) -> Iterator[Callable[[str], Platform]]:
    monkeypatch.setenv("HOOK_TOKEN", "hook-secret")
    started: list[Platform] = []

    def make(tasks_yaml: str) -> Platform:
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text(instance_yaml(use_postgres=False))
        catalog = write_catalog(tmp_path / "catalog", demo_agent.url, tasks_yaml)
        platform = Platform(home, catalog, demo_agent, tmp_path)
        started.append(platform)
        return platform

    yield make
    for platform in started:
        platform.stop()


def _sent(platform: Platform, task: str) -> list[str]:
    """Idempotency keys of the requests the agent received for `task`, in arrival order."""
    return [
        r.headers["idempotency-key"]
        for r in platform.agent.requests()
        if r.headers.get("idempotency-key", "").startswith(f"agent-pipelines:{task}:")
    ]


def _due(key: str) -> dt.datetime:
    return parse_due(key.split(":schedule:")[1])


EVERY_2S = """\
tasks:
  - {name: pulse, owner: ops, agent: demo, prompt: "pulse {{ due_time.isoformat() }}", schedule: {every: 2s}}
"""


def test_every_two_seconds_for_thirty_seconds_exactly_once(platform) -> None:
    p = platform(EVERY_2S)
    p.start_daemon()
    started = dt.datetime.now(dt.timezone.utc)
    # Leave the start-up behind (the first window run starts seconds after the daemon), then
    # watch 30 s of due times fire live.
    begin = started + dt.timedelta(seconds=15)
    begin += dt.timedelta(seconds=2 - begin.second % 2, microseconds=-begin.microsecond)
    expected = [begin + i * STEP for i in range(15)]  # 30 s: begin .. begin + 28 s
    wait_until(
        lambda: any(_due(k) >= expected[-1] for k in _sent(p, "pulse")), timeout_s=150, message="30 s of pulses"
    )
    time.sleep(1)
    keys = _sent(p, "pulse")
    assert len(keys) == len(set(keys)), f"a due time was sent twice: {collections.Counter(keys).most_common(3)}"
    dues = sorted(_due(k) for k in keys)
    assert [d for d in dues if begin <= d <= expected[-1]] == expected, p.daemon_logs()
    with p.instance() as instance:
        records = instance.fetch_materializations(dg.AssetKey("pulse"), limit=200).records
        assert len({r.asset_materialization.metadata["idempotency_key"].value for r in records}) == len(records)


OUTAGE = """\
tasks:
  - name: keep_all
    owner: ops
    agent: demo
    prompt: "all {{ due_time.isoformat() }}"
    schedule: {every: 2s}
    misfire: {policy: all, grace: 4s, max_catchup: 100}
  - name: keep_latest
    owner: ops
    agent: demo
    prompt: "latest {{ due_time.isoformat() }}"
    schedule: {every: 2s}
    misfire: {policy: latest, grace: 4s}
  - name: skip_missed
    owner: ops
    agent: demo
    prompt: "skip {{ due_time.isoformat() }}"
    schedule: {every: 2s}
    misfire: {policy: skip, grace: 4s}
"""


def test_sigkill_of_the_daemon_and_its_runs(platform) -> None:
    p = platform(OUTAGE)
    p.start_daemon()
    steady = time.time() + 15  # the start-up (first run starting late) is an episode of its own
    wait_until(
        lambda: any(_due(k).timestamp() > steady + 6 for k in _sent(p, "skip_missed")),
        timeout_s=150,
        message="firing before the crash",
    )
    p.kill_daemon(with_its_runs=True)  # the whole machine's worth: daemon, code server, window runs
    crashed_at = time.time()
    time.sleep(20)
    p.start_daemon()
    restarted_at = time.time()
    # wait until the misfire reconciler (grace 4 s) has looked past the outage and the new runs fire
    wait_until(
        lambda: any(_due(k).timestamp() > restarted_at + 25 for k in _sent(p, "skip_missed")),
        timeout_s=150,
        message="firing again after the restart",
    )
    store = p.store()

    def window_of(task: str) -> tuple[list[dt.datetime], list[str]]:
        """The task's due times from its first after the start-up to 25 s after the restart."""
        first = min(_due(k) for k in _sent(p, task) if _due(k).timestamp() >= steady)
        last = dt.datetime.fromtimestamp(restarted_at + 25, dt.timezone.utc)
        window = [first + n * STEP for n in range(int((last - first) / STEP) + 1) if first + n * STEP < last]
        return window, [f"agent-pipelines:{task}:schedule:{m.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}" for m in window]

    def lingering() -> list[str]:
        states = ("catchup", "claimed", "sending", "retrying")
        unsettled_rows = [f"{e.idempotency_key} {e.status} run={e.run_id}" for s in states for e in store.executions_with_status(s)]
        undecided = [
            key
            for task in ("keep_all", "keep_latest", "skip_missed")
            for key in window_of(task)[1]
            if store.get_execution(key) is None
        ]
        return unsettled_rows + [f"{key} not decided yet" for key in undecided]

    try:
        wait_until(lambda: not lingering(), timeout_s=120, message="catch-up runs to finish and every due time to be decided")
    except AssertionError as error:
        raise AssertionError(f"{error}: {lingering()}\n{p.daemon_logs()[-4000:]}") from None
    p.kill_daemon(with_its_runs=False)

    with p.instance() as instance:
        catchup_runs = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"agent_pipelines/catchup": "true"}))}
    for task in ("keep_all", "keep_latest", "skip_missed"):
        sent = _sent(p, task)
        assert len(sent) == len(set(sent)), f"{task}: a due time was sent twice"
        executions = {e.idempotency_key: e for e in store.executions_for_task(task, limit=1000)}
        window, keys = window_of(task)
        statuses = [executions[k].status if k in executions else "absent" for k in keys]
        assert "absent" not in statuses, f"{task}: due times nobody decided about: {statuses}"
        assert set(statuses) <= {"succeeded", "missed", "unknown"}, f"{task}: {statuses}"
        assert all(executions[k].reason for k, s in zip(keys, statuses) if s != "succeeded"), "every miss says why"
        # A request in flight when its run was killed has an unknown outcome: reported, not resent.
        interrupted = [k for k, s in zip(keys, statuses) if s == "unknown"]
        assert all(executions[k].failure_kind == "interrupted" for k in interrupted), f"{task}: {statuses}"
        assert all(abs(_due(k).timestamp() - crashed_at) < 5 for k in interrupted), f"{task}: {interrupted}"
        assert {k for k, s in zip(keys, statuses) if s == "succeeded"} <= set(sent)
        assert not {k for k, s in zip(keys, statuses) if s == "missed"} & set(sent), f"{task}: a missed due time was sent"
        during_outage = [k for k, m in zip(keys, window) if crashed_at + 5 < m.timestamp() < restarted_at]
        outage_statuses = [executions[k].status for k in during_outage]
        caught_up = [k for k in keys if executions[k].run_id in catchup_runs]
        if task == "keep_all":
            assert set(statuses) - {"unknown"} == {"succeeded"}, "policy all: every missed due time is caught up"
            assert set(during_outage) <= set(caught_up)
        elif task == "keep_latest":
            assert "missed" in outage_statuses, "an outage longer than the grace leaves misses"
            timeline = [
                (m.strftime("%H:%M:%S"), executions[k].status, "catchup" if k in caught_up else "")
                for k, m in zip(keys, window)
            ]
            why = f"crash {crashed_at:.1f} restart {restarted_at:.1f}: {timeline}"
            # the kill's outage gets exactly one catch-up; a loaded machine may stall the new
            # daemon's run past the grace once more, and that gap then gets its own one
            of_the_kill = [k for k in caught_up if crashed_at < _due(k).timestamp() <= restarted_at + 10]
            assert len(of_the_kill) == 1, f"policy latest: one catch-up for the outage, got {caught_up}; {why}"
            for key in caught_up:
                # the newest of an outage found at once; the first of a gap decided live
                at = keys.index(key)
                beside = statuses[max(at - 1, 0) : at] + statuses[at + 1 : at + 2]
                assert "missed" in beside, f"policy latest: a catch-up only within a gap of misses: {why}"
            for earlier, later in zip(caught_up, caught_up[1:]):
                # never two catch-ups back to back (that would be `all`); on a loaded machine two
                # episodes (a stalled start, then the kill) may follow each other with no live
                # success between them, each with its one catch-up
                between = statuses[keys.index(earlier) + 1 : keys.index(later)]
                assert "missed" in between or "succeeded" in between, f"policy latest: one catch-up per episode: {why}"
        else:
            assert set(outage_statuses) == {"missed"}, "policy skip: nothing of the outage runs"
            assert caught_up == []


EVENTS = """\
sources:
  - {name: hooks, auth: {kind: bearer, token_env: HOOK_TOKEN}}
tasks:
  - name: on_alert
    owner: ops
    agent: demo
    events: [{source: hooks, type: alert}]
    prompt: "alert {{ event.payload.n }}"
"""


def test_event_burst_through_a_daemon_restart(platform) -> None:
    p = platform(EVENTS)
    ingress = p.start_ingress()
    p.start_daemon()
    # a window run is standing by once the scheduler has ticked
    with p.instance() as instance:
        wait_until(
            lambda: any(r.status == dg.DagsterRunStatus.STARTED for r in instance.get_runs(limit=5)),
            timeout_s=90,
            message="a window run to start",
        )

    def post(n: int) -> int:
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{ingress}/events/hooks",
                json={"type": "alert", "n": n},
                headers={"Authorization": "Bearer hook-secret", "Idempotency-Key": f"alert-{n}"},
            )
            return response.status_code

    numbers = list(range(150)) + list(range(0, 150, 3))  # 200 posts, 50 of them repeats
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        first_half = pool.map(post, numbers[:100])
        p.kill_daemon(with_its_runs=False)
        p.start_daemon()
        second_half = pool.map(post, numbers[100:])
        codes = list(first_half) + list(second_half)
    assert set(codes) <= {200, 202} and codes.count(202) == 150

    wait_until(lambda: len(set(_sent(p, "on_alert"))) >= 150, timeout_s=180, message="150 alerts delivered")
    time.sleep(12)  # past the safety net's delay: it must not deliver anything twice
    sent = _sent(p, "on_alert")
    assert len(sent) == len(set(sent)) == 150
    assert {k.rsplit(":", 1)[1] for k in sent} == {f"alert-{n}" for n in range(150)}
    store = p.store()
    assert len(store.events_after(0, limit=1000)) == 150
