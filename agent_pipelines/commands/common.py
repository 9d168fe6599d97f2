"""What the command modules share: the store of the instance in DAGSTER_HOME, and time options."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click


if TYPE_CHECKING:
    from agent_pipelines.catalog.loader import Catalog
    from agent_pipelines.store.store import StateStore


def use_default_home() -> None:
    """Commands that open the instance work without DAGSTER_HOME, like `make run` does."""
    if not os.environ.get("DAGSTER_HOME"):
        from agent_pipelines.instance import ensure_instance

        os.environ["DAGSTER_HOME"] = str(ensure_instance())


@contextmanager
def opened_store() -> Iterator[StateStore]:
    from dagster import DagsterInstance

    from agent_pipelines.store import StateStore

    use_default_home()
    with DagsterInstance.get() as instance:
        yield StateStore.for_instance(instance)


def parse_moment(text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """`2h` / `30m` / `7d` back from now, or an ISO date/time (records.filters.parse_moment), as
    a command-line option: a bad value is a usage error."""
    from agent_pipelines.records.filters import parse_moment as parse

    if not text:
        return None
    try:
        return parse(text, now or dt.datetime.now(dt.timezone.utc))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@contextmanager
def access_checked(store: StateStore, catalog: Catalog, action: str, task_names: list[str], **details: Any) -> Iterator[None]:
    """The access policy's check for the CLI's user around a mutation, and its audit entry
    (agent_pipelines.access.enforce); a refusal is a one-line error, exit code 1."""
    from agent_pipelines.access.enforce import Denied, guarded
    from agent_pipelines.access.policy import PolicyError

    try:
        with guarded(store, catalog, action, task_names, **details):
            yield
    except (Denied, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None
