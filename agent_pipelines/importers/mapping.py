"""What importing from OpenClaw and from Hermes share: the result of mapping one job, task
names, prompts, schedules, time zones, notification channels and the due-time cross-check.

A job either becomes a task (`imported`, with `notes` for each setting that could not be
carried over), or is `not_mapped` / `skipped` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent_pipelines.catalog.durations import format_duration
from agent_pipelines.catalog.model import (
    NAME_RE,
    CronScheduleSpec,
    IntervalScheduleSpec,
    OneShotScheduleSpec,
)

UTC = dt.timezone.utc
#: Tags that mark a task as imported (and by whom it may be updated).
TAG_FROM = "imported_from"
TAG_GATEWAY = "source_gateway"
TAG_JOB = "source_job_id"
TAG_DIGEST = "import_digest"
MAX_NAME = 63
Status = Literal["imported", "not_mapped", "skipped"]


@dataclass
class AgentEntry:
    """The catalog agent a gateway's jobs run on."""

    name: str
    kind: str
    base_url: str
    auth_env: str | None = None
    auth_file: str | None = None
    agent_id: str | None = None  # OpenClaw only
    description: str | None = None

    def as_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.description:
            entry["description"] = self.description
        entry["base_url"] = self.base_url
        if self.auth_env:
            entry["auth_env"] = self.auth_env
        if self.auth_file:
            entry["auth_file"] = self.auth_file
        if self.agent_id is not None:
            entry["agent_id"] = self.agent_id
        return entry


@dataclass
class JobResult:
    """One source job and what became of it."""

    kind: str  # openclaw | hermes
    gateway: str
    job_id: str
    job_name: str
    status: Status
    reason: str | None = None
    agent: str | None = None
    task: dict[str, Any] | None = None  # the task, without name and tags (the writer adds them)
    comments: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # settings not carried over
    source_enabled: bool = False
    source_next_run: dt.datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The imported task an `export` re-created this job for (it then replaces the lost job).
    exported_for: str | None = None
    # Filled in by the catalog writer:
    task_name: str | None = None
    action: str | None = None  # new | updated | unchanged | kept
    file: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.gateway, self.job_id)

    def not_mapped(self, reason: str) -> JobResult:
        self.status, self.reason, self.task = "not_mapped", reason, None
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "gateway": self.gateway, "job_id": self.job_id, "job_name": self.job_name,
            "status": self.status, "reason": self.reason, "agent": self.agent, "task": self.task_name,
            "action": self.action, "file": self.file, "notes": list(self.notes),
            "source_enabled": self.source_enabled,
            "source_next_run": self.source_next_run.isoformat() if self.source_next_run else None,
        }


# -------------------------------------------------------------------------------------------
# Names
# -------------------------------------------------------------------------------------------


def slug(text: str, fallback: str = "job") -> str:
    """lower_snake_case from any text; starts with a letter."""
    value = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not value:
        value = fallback
    if not value[0].isalpha():
        value = f"{fallback}_{value}"
    return value


def short_hash(*parts: str, length: int = 6) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def task_name(agent: str, job_name: str, job_id: str, gateway: str, taken: set[str]) -> str:
    """`<agent>_<job>`, at most 63 characters; a taken name gets a suffix derived from the job's
    identity, so the same job always gets the same name whatever order jobs are read in."""
    base = f"{agent}_{slug(job_name)}"
    candidates = [base[:MAX_NAME].rstrip("_")]
    for length in (6, 10, 16):
        suffix = "_" + short_hash(gateway, job_id, length=length)
        candidates.append(base[: MAX_NAME - len(suffix)].rstrip("_") + suffix)
    for candidate in candidates:
        if candidate not in taken and re.match(NAME_RE, candidate):
            return candidate
    raise ValueError(f"no free task name for job {job_id!r} of {gateway!r}")


def agent_name(gateway: str, agent_id: str | None, default_agent_id: str = "main") -> str:
    """OpenClaw: the gateway's default agent is the gateway's name; others `<gateway>_<agent id>`."""
    if agent_id is None or agent_id == default_agent_id:
        return gateway
    name = f"{gateway}_{slug(agent_id, 'agent')}"
    if len(name) > MAX_NAME:
        suffix = "_" + short_hash(gateway, agent_id)
        name = name[: MAX_NAME - len(suffix)].rstrip("_") + suffix
    return name


# -------------------------------------------------------------------------------------------
# Prompts
# -------------------------------------------------------------------------------------------

_JINJA = re.compile(r"\{\{|\{%|\{#|\}\}|%\}|#\}")


def literal_prompt(text: str) -> str:
    """The text as a Jinja template that renders to exactly that text."""
    if not _JINJA.search(text):
        return text
    if "endraw" not in text:
        return "{% raw %}" + text + "{% endraw %}"
    return re.sub(r"([{}%#])", lambda m: "{{ '" + m.group(1) + "' }}", text)


# -------------------------------------------------------------------------------------------
# Time
# -------------------------------------------------------------------------------------------


def local_zone() -> str:
    """This machine's IANA time zone (TZ, else /etc/localtime's target, else /etc/timezone, else UTC)."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    for name in candidates:
        if name in ("Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Universal", "Etc/Zulu"):
            return "UTC"
        if name:
            try:
                zoneinfo.ZoneInfo(name)
                return name
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


def valid_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False


def from_ms(value: Any) -> dt.datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return dt.datetime.fromtimestamp(value / 1000, tz=UTC)


def iso(moment: dt.datetime) -> str:
    """ISO 8601 with offset, to the millisecond when it has one."""
    spec = "milliseconds" if moment.microsecond % 1000 == 0 and moment.microsecond else "auto"
    return moment.isoformat(timespec=spec)


def duration_text(seconds: float) -> str:
    return format_duration(seconds)


def checked_cron(result: JobResult, expr: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """`spec` when our scheduler reads the cron schedule; else the job is reported not mapped."""
    try:
        schedule_model(spec)
    except ValueError as exc:
        result.not_mapped(f"cron {expr!r}: {exc}")
        return None
    return spec


def schedule_model(schedule: Mapping[str, Any]) -> CronScheduleSpec | IntervalScheduleSpec | OneShotScheduleSpec:
    """The schedule a task dict holds, as our scheduler reads it (raises ValueError if invalid)."""
    from pydantic import ValidationError

    try:
        if "cron" in schedule:
            return CronScheduleSpec.model_validate(dict(schedule))
        if "every" in schedule:
            return IntervalScheduleSpec.model_validate(dict(schedule))
        return OneShotScheduleSpec.model_validate(dict(schedule))
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


def is_due_time(schedule: Mapping[str, Any], moment: dt.datetime) -> bool:
    """Whether `moment` (to the millisecond) is one of the schedule's due times."""
    from agent_pipelines.scheduling.timing import due_times

    tolerance = dt.timedelta(milliseconds=1)
    return any(True for _ in due_times(schedule_model(schedule), moment - tolerance, moment + tolerance))


def check_next_run(result: JobResult, product: str) -> None:
    """Note it when the product's own next run is not a due time of the imported schedule (a
    cron dialect difference, a guessed time zone, a retry back-off or pacing in the product)."""
    task = result.task
    if task is None or result.source_next_run is None or "schedule" not in task:
        return
    try:
        matches = is_due_time(task["schedule"], result.source_next_run)
    except ValueError:
        return
    if not matches:
        result.notes.append(
            f"{product}'s next run {iso(result.source_next_run)} is not a due time of the imported schedule "
            "(check the time zone: the job may fire at other times here)"
        )


# -------------------------------------------------------------------------------------------
# Notifications
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelMap:
    """Which catalog notification channel stands for a product's delivery target.

    `explicit` maps `<channel>` or `<channel>:<to>` (as the product names them) to a catalog
    channel; otherwise a catalog channel with the same name as the product's channel is used.
    """

    explicit: Mapping[str, str]
    known: frozenset[str]

    def channel_for(self, channel: str | None, to: str | None) -> str | None:
        if not channel:
            return None
        for key in (f"{channel}:{to}" if to else None, channel):
            if key and key in self.explicit:
                return self.explicit[key]
        candidate = slug(channel, "channel")
        return candidate if candidate in self.known else None


def notify_block(channels: Iterable[str]) -> dict[str, Any] | None:
    chosen = sorted(set(channels))
    if not chosen:
        return None
    return {"channels": chosen, "events": ["failure", "recovery"]}
