"""Validation of the top-level `notifications:` blocks and of each task's `notify:`.

Notifications are never worth a task: a broken channel, route or `notify:` is reported with
its file, line and field like any other problem, and only the broken part is dropped (a task
whose `notify:` is invalid keeps running, without it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent_pipelines.catalog.notifications import (
    ChannelSpec,
    DeliverySpec,
    NotificationsBlockSpec,
    NotificationsSpec,
    NotifySpec,
    RouteSpec,
)

if TYPE_CHECKING:
    from agent_pipelines.catalog.loader import _Item, _Problems


@functools.cache
def apprise_schemes() -> frozenset[str]:
    """Every URL scheme the installed apprise can deliver to."""
    from apprise.manager_plugins import NotificationManager

    return frozenset(scheme.lower() for scheme in NotificationManager().schemas())


def without_notify(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A task's raw fields minus `notify`, which is checked on its own (see `attach_task_notify`)."""
    return {key: value for key, value in raw.items() if key != "notify"}


def validate_notifications(blocks: list[_Item], problems: _Problems) -> NotificationsSpec:
    """Merge every file's block: channels by name (a duplicated name drops all copies), routes
    in file order, `delivery` from the one file that sets it."""
    from agent_pipelines.catalog.loader import _check_duplicates, _Item, _report_validation_error

    channel_items: list[_Item] = []
    route_items: list[_Item] = []
    delivery: DeliverySpec | None = None
    delivery_from: str | None = None
    for block in blocks:
        if not isinstance(block.raw, dict):
            problems.add(block, "`notifications` must be a mapping with `channels:`, `routes:` and/or `delivery:`")
            continue
        known = {key: value for key, value in block.raw.items() if key in NotificationsBlockSpec.model_fields}
        for key in block.raw:
            if key not in known:
                problems.add(block, f"unknown field {key!r}{_suggest(key, NotificationsBlockSpec.model_fields)}", (key,))
        try:
            parsed = NotificationsBlockSpec.model_validate(known)
        except ValidationError as exc:
            _report_validation_error(block, exc, NotificationsBlockSpec, problems)
            continue
        if parsed.delivery is not None:
            if delivery is not None:
                problems.add(block, f"`delivery` is already set in {delivery_from}; set it in one file", ("delivery",))
            else:
                delivery, delivery_from = parsed.delivery, block.file
        for key, kind, bucket in (("channels", "channel", channel_items), ("routes", "route", route_items)):
            entries = block.raw.get(key) or []
            for index, entry in enumerate(entries):
                line = entries.line_of(index) if hasattr(entries, "line_of") else block.line
                item = _Item(kind=kind, file=block.file, raw=entry, line=getattr(entry, "line", line))
                if not isinstance(entry, dict):
                    problems.add(item, f"each entry of `notifications.{key}` must be a mapping, got {type(entry).__name__}")
                    continue
                label = entry.get("name") if kind == "channel" else entry.get("owner")
                item.name = label if isinstance(label, str) else None
                if kind == "channel" and item.name is None:
                    problems.add(item, "`name` is required", ("name",))
                    continue
                bucket.append(item)

    channels: dict[str, ChannelSpec] = {}
    for item in _check_duplicates(channel_items, problems):
        try:
            channel = ChannelSpec.model_validate(dict(item.raw))
        except ValidationError as exc:
            _report_validation_error(item, exc, ChannelSpec, problems)
            continue
        if channel.scheme is not None and channel.scheme not in apprise_schemes():
            problems.add(
                item,
                f"unknown apprise URL scheme {channel.scheme + '://'!r}{_suggest(channel.scheme, apprise_schemes())}",
                ("url",),
            )
            continue
        channels[channel.name] = channel

    routes: list[RouteSpec] = []
    for item in route_items:
        try:
            route = RouteSpec.model_validate(dict(item.raw))
        except ValidationError as exc:
            _report_validation_error(item, exc, RouteSpec, problems)
            continue
        known = _known_channels(item, ("channels",), route.channels, channels, problems)
        if known:
            routes.append(route.model_copy(update={"channels": known}))
    return NotificationsSpec(channels=channels, routes=tuple(routes), delivery=delivery or DeliverySpec())


def attach_task_notify(items: Iterable[_Item], notifications: NotificationsSpec, problems: _Problems) -> None:
    """Check each valid task's `notify:` and set it on the spec; a bad one is reported and left off."""
    from agent_pipelines.catalog.loader import _suggest

    for item in items:
        raw = item.raw.get("notify") if isinstance(item.raw, dict) else None
        if raw is None:
            continue
        try:
            notify = NotifySpec.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors():
                loc = ("notify", *error["loc"])
                if error["type"] == "extra_forbidden":
                    allowed = NotifySpec.model_fields.keys() if len(loc) == 2 else ()
                    message = f"unknown field {loc[-1]!r}{_suggest(loc[-1], allowed)}"
                elif error["type"] == "model_type":
                    message = "`notify` must be a mapping of channels, events, late_after, window, owner_routes"
                else:
                    message = error["msg"].removeprefix("Value error, ")
                problems.add(item, message + " (the task runs without `notify`)", loc)
            continue
        known = _known_channels(item, ("notify", "channels"), notify.channels, notifications.channels, problems)
        item.spec = item.spec.model_copy(update={"notify": notify.model_copy(update={"channels": known})})


def _known_channels(
    item: _Item, field: tuple[str, ...], names: list[str], channels: Mapping[str, ChannelSpec], problems: _Problems
) -> list[str]:
    known = []
    for index, name in enumerate(names):
        if name in channels:
            known.append(name)
        else:
            problems.add(item, f"unknown notification channel {name!r}{_suggest(name, channels)}", (*field, index))
    return known


def _suggest(word: Any, choices: Iterable[str]) -> str:
    from agent_pipelines.catalog.loader import _suggest as suggest

    return suggest(word, choices)
