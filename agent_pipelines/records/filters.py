"""What people type (CLI options, the page's query string) turned into a `RecordFilter`.

One function for both, so `executions list --owner ops --since 2h` and
`/ops/executions?owner=ops&since=2h` mean exactly the same thing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.loader import Catalog
from agent_pipelines.catalog.spec import owner_shorthand
from agent_pipelines.store import status
from agent_pipelines.store.records import RecordFilter

STATUSES = (
    status.CLAIMED, status.SENDING, status.RETRYING, status.SUCCEEDED, status.FAILED,
    status.UNKNOWN, status.NOT_SENT, status.MISSED, status.SKIPPED, status.CATCHUP,
)  # fmt: skip
TRIGGERS = ("schedule", "event", "upstream", "manual")


def parse_moment(text: str, now: dt.datetime) -> dt.datetime:
    """`2h`, `30m`, `7d` (that long before now), or an ISO date or date-time (UTC unless it
    says otherwise)."""
    value = text.strip()
    try:
        return now - dt.timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected a duration back from now (2h, 30m, 7d) or an ISO date/time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def tasks_of_owners(catalog: Catalog, owners: Iterable[str]) -> frozenset[str]:
    """Tasks the catalog gives to any of `owners` (`ops` means the team `team:ops`)."""
    wanted = {owner_shorthand(o) for o in owners}
    known = {task.owner for task in catalog.tasks.values()}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"no task in the catalog is owned by {', '.join(unknown)} (owners: {', '.join(sorted(known)) or 'none'})")
    return frozenset(name for name, task in catalog.tasks.items() if task.owner in wanted)


def _split(values: Iterable[str]) -> tuple[str, ...]:
    """Repeated options and comma-separated values alike: `--status failed,unknown`."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def build_filter(
    *,
    now: dt.datetime,
    catalog: Catalog | None = None,
    tasks: Iterable[str] = (),
    owners: Iterable[str] = (),
    agents: Iterable[str] = (),
    statuses: Iterable[str] = (),
    triggers: Iterable[str] = (),
    prompt_versions: Iterable[str] = (),
    since: str | None = None,
    until: str | None = None,
    text: str | None = None,
) -> RecordFilter:
    """Raises ValueError, in words a user can act on, for anything that cannot be searched."""
    wanted_statuses = _split(statuses)
    bad = [s for s in wanted_statuses if s not in STATUSES]
    if bad:
        raise ValueError(f"unknown status {', '.join(bad)} (statuses: {', '.join(STATUSES)})")
    owner_list = _split(owners)
    only_tasks = None
    if owner_list:
        if catalog is None:
            raise ValueError("--owner needs the catalog, to know which tasks each owner has")
        only_tasks = tasks_of_owners(catalog, owner_list)
    return RecordFilter(
        tasks=_split(tasks),
        only_tasks=only_tasks,
        agents=_split(agents),
        statuses=wanted_statuses,
        triggers=_split(triggers),
        prompt_versions=_split(prompt_versions),
        since=parse_moment(since, now) if since else None,
        until=parse_moment(until, now) if until else None,
        text=text or None,
    )
