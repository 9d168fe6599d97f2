"""Hermes Agent's cron jobs: read them, map them to tasks, pause and resume them.

Jobs are read from Hermes's API server (`GET /api/jobs?include_disabled=true`, the same key as
its chat endpoint), or, when the API cannot be reached and the gateway entry names its
`state_dir` (HERMES_HOME), from `cron/jobs.json` there, read-only. They are only changed
through the API (`POST /api/jobs/{id}/pause|resume`, `POST /api/jobs`), never deleted.

The job format is hermes-agent 0.19's `cron/jobs.py`: `schedule` {kind: cron (croniter, so a
6th field is seconds *last*), interval (`minutes`), once (`run_at`)}, evaluated in Hermes's
configured time zone (HERMES_TIMEZONE, else `timezone:` in config.yaml, else the host's);
`next_run_at` is its next due time; `repeat` {times, completed}; `deliver` (local, origin,
a platform, or platform:chat_id); `script` / `no_agent` / `skills` / `context_from`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent_pipelines.importers.gateways import GatewayError, GatewaySpec
from agent_pipelines.importers.mapping import (
    AgentEntry,
    ChannelMap,
    JobResult,
    check_next_run,
    duration_text,
    iso,
    literal_prompt,
    notify_block,
    checked_cron,
    valid_zone,
)

KIND = "hermes"
HTTP_TIMEOUT_S = 30.0
#: Hermes stops a cron run after 10 minutes without activity (HERMES_CRON_TIMEOUT).
DEFAULT_TURN_TIMEOUT_S = 600


def _client(gateway: GatewaySpec) -> httpx.Client:
    token = gateway.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.base_url or "", headers=headers, timeout=HTTP_TIMEOUT_S, trust_env=False)


def _error(gateway: GatewaySpec, what: str, response: httpx.Response) -> GatewayError:
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict):
        detail = detail.get("message")
    return GatewayError(f"gateway {gateway.name!r}: {what}: HTTP {response.status_code} {detail or response.text[:300]}")


def read_jobs(gateway: GatewaySpec) -> tuple[list[dict[str, Any]], str]:
    """Every job (paused ones too) and where they were read from."""
    try:
        with _client(gateway) as client:
            response = client.get("/api/jobs", params={"include_disabled": "true"})
        if response.status_code != 200:
            raise _error(gateway, "GET /api/jobs", response)
        jobs = response.json().get("jobs")
        if not isinstance(jobs, list):
            raise GatewayError(f"gateway {gateway.name!r}: GET /api/jobs answered without a jobs list")
        return jobs, f"{gateway.base_url}/api/jobs"
    except httpx.TransportError as exc:
        if not gateway.state_dir:
            raise GatewayError(f"gateway {gateway.name!r}: cannot reach {gateway.base_url}: {exc}") from None
    path = Path(gateway.state_dir).expanduser() / "cron" / "jobs.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise GatewayError(f"gateway {gateway.name!r}: API unreachable and {path} unreadable: {exc}") from None
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    return [j for j in jobs if isinstance(j, dict)], f"{path} (the API server was unreachable)"


def configured_zone(gateway: GatewaySpec) -> str | None:
    """Hermes's time zone from the gateway entry, else from `timezone:` in HERMES_HOME/config.yaml."""
    if gateway.timezone:
        return gateway.timezone
    if gateway.state_dir:
        try:
            config = yaml.safe_load((Path(gateway.state_dir).expanduser() / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None
        zone = config.get("timezone") if isinstance(config, dict) else None
        if valid_zone(zone):
            return str(zone).strip()
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def seconds_first(expr: str) -> str | None:
    """Hermes reads cron with croniter: a 6th field is seconds at the *end*; ours come first."""
    fields = expr.split()
    if len(fields) == 5:
        return " ".join(fields)
    if len(fields) == 6:
        return " ".join([fields[5], *fields[:5]])
    return None


def map_job(job: dict[str, Any], gateway: GatewaySpec, channels: ChannelMap, now: dt.datetime, zone: str,
            zone_guessed: bool) -> JobResult:
    job_id = str(job.get("id") or "")
    name = str(job.get("name") or job_id)
    result = JobResult(
        kind=KIND, gateway=gateway.name, job_id=job_id, job_name=name, status="imported", agent=gateway.name,
        source_enabled=bool(job.get("enabled", True)) and job.get("state") != "paused",
        source_next_run=_parse_time(job.get("next_run_at")), raw=job,
    )
    result.exported_for = name  # `export` re-creates a lost job under its task's name
    if job.get("no_agent"):
        return result.not_mapped("no_agent job: its script runs on the Hermes host and its output is delivered, no agent turn")
    if job.get("script"):
        return result.not_mapped(
            f"pre-run script {job['script']!r}: its output is put into the prompt at every run, on the Hermes host"
        )
    prompt = str(job.get("prompt") or "")
    skills = [s for s in job.get("skills") or ([job["skill"]] if job.get("skill") else []) if s]
    if not prompt.strip():
        return result.not_mapped("no prompt (the job runs its skills only)" if skills else "no prompt")
    schedule = _schedule(job, result, now, zone, zone_guessed)
    if schedule is None:
        return result

    task: dict[str, Any] = {
        "description": name,
        "owner": gateway.owner or "imported",
        "agent": gateway.name,
        "schedule": schedule,
        "misfire": {"policy": "latest"},  # Hermes fires a missed job once, then moves on
        "prompt": literal_prompt(prompt),
        "session": "isolated",
        "timeout": duration_text(DEFAULT_TURN_TIMEOUT_S),
    }
    if "at" not in schedule:
        task["overload"] = "skip_while_running"  # Hermes skips a tick while the job is still running
    if skills:
        result.notes.append(f"skills {skills!r} not loaded before the prompt: the agent answers the prompt alone")
    if job.get("context_from"):
        result.notes.append(
            f"context_from {job['context_from']!r} not carried: declare `depends_on` and use {{{{ upstream.<task> }}}}"
        )
    for field_name, label in (("model", "model"), ("provider", "provider"), ("base_url", "model base URL")):
        if job.get(field_name):
            result.notes.append(f"{label} override {job[field_name]!r} not carried: the agent's default applies")
    if job.get("enabled_toolsets"):
        result.notes.append(f"toolset restriction {job['enabled_toolsets']!r} not carried")
    if job.get("workdir"):
        result.notes.append(f"workdir {job['workdir']!r} not carried")
    repeat = job.get("repeat") or {}
    if isinstance(repeat, dict) and repeat.get("times") and "at" not in schedule:
        left = max(0, int(repeat["times"]) - int(repeat.get("completed") or 0))
        result.notes.append(f"repeat limit not carried ({left} of {repeat['times']} runs left): the task runs until disabled")
    notify = _delivery(job, result, channels)
    if notify:
        task["notify"] = notify
    task["enabled"] = result.source_enabled
    result.task = task
    check_next_run(result, "Hermes")
    return result


def _schedule(job: dict[str, Any], result: JobResult, now: dt.datetime, zone: str, zone_guessed: bool) -> dict[str, Any] | None:
    schedule = job.get("schedule") or {}
    kind = schedule.get("kind") if isinstance(schedule, dict) else None
    if kind == "cron":
        expr = str(schedule.get("expr") or "")
        cron = seconds_first(expr)
        if cron is None:
            result.not_mapped(f"cron {expr!r}: 5 or 6 fields are imported")
            return None
        spec: dict[str, Any] = {"cron": cron, "timezone": zone}
        if zone_guessed:
            result.notes.append(
                f"Hermes evaluates cron in its configured time zone: {zone} assumed (this machine's); "
                "set `timezone:` or `state_dir:` on the gateway entry if Hermes's differs"
            )
        return checked_cron(result, expr, spec)
    if kind == "interval":
        minutes = schedule.get("minutes")
        if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes <= 0:
            result.not_mapped(f"interval of {minutes!r} minutes")
            return None
        spec = {"every": duration_text(float(minutes) * 60)}
        anchor = result.source_next_run or _parse_time(job.get("created_at"))
        if anchor is not None:
            spec["anchor"] = iso(anchor)
        result.notes.append(
            "Hermes counts an interval from the last run (and from 'now' when resumed); here it stays on the grid of its next run"
        )
        return spec
    if kind == "once":
        moment = _parse_time(schedule.get("run_at"))
        if moment is None:
            result.not_mapped(f"one-shot time {schedule.get('run_at')!r} is not an ISO timestamp with an offset")
            return None
        if moment <= now:
            result.not_mapped(f"one-shot time {iso(moment)} has passed" + (" (it ran)" if job.get("last_run_at") else ""))
            return None
        return {"at": iso(moment)}
    result.not_mapped(f"schedule kind {kind!r}")
    return None


_PLATFORM_TARGET = re.compile(r"^([A-Za-z][\w-]*)(?::(.+))?$")


def _delivery(job: dict[str, Any], result: JobResult, channels: ChannelMap) -> dict[str, Any] | None:
    deliver = str(job.get("deliver") or "local")
    if deliver == "local":
        return None
    if deliver == "origin":
        origin = job.get("origin") or {}
        platform, chat = origin.get("platform"), origin.get("chat_id")
        target = f"origin ({platform} {chat})" if platform else "origin"
        result.comments.append(f"delivery: {target}")
        result.notes.append(f"output delivery to {target} not carried: outputs stay in Dagster and the execution records")
    else:
        match = _PLATFORM_TARGET.match(deliver)
        platform, chat = (match.group(1), match.group(2)) if match else (deliver, None)
        result.comments.append(f"delivery: {deliver}")
        result.notes.append(f"output delivery to {deliver} not carried: outputs stay in Dagster and the execution records")
    if not platform or platform == "api_server":
        return None
    mapped = channels.channel_for(str(platform), str(chat) if chat else None)
    if mapped:
        return notify_block([mapped])
    result.notes.append(
        f"failure messages to {deliver} not carried: no catalog notification channel for {platform!r} "
        f"(declare one and pass --notify-channel {platform}=<channel>)"
    )
    return None


def map_jobs(jobs: list[dict[str, Any]], gateway: GatewaySpec, channels: ChannelMap, now: dt.datetime, zone: str,
             zone_guessed: bool) -> list[JobResult]:
    return [map_job(job, gateway, channels, now, zone, zone_guessed) for job in jobs if isinstance(job, dict)]


def agents_for(gateway: GatewaySpec, results: list[JobResult]) -> list[AgentEntry]:
    if not any(r.status == "imported" for r in results):
        return []
    return [AgentEntry(name=gateway.name, kind=KIND, base_url=gateway.base_url or "", auth_env=gateway.auth_env,
                       auth_file=gateway.auth_file, description=f"Hermes Agent {gateway.name} (imported)")]


# -------------------------------------------------------------------------------------------
# Changing jobs (through the API only)
# -------------------------------------------------------------------------------------------


def set_enabled(gateway: GatewaySpec, job_ids: Sequence[str], enabled: bool) -> dict[str, str | None]:
    """Pause or resume jobs; job id -> None on success, else the error. Never deletes."""
    outcome: dict[str, str | None] = {}
    action = "resume" if enabled else "pause"
    with _client(gateway) as client:
        for job_id in job_ids:
            try:
                response = client.post(f"/api/jobs/{job_id}/{action}")
                outcome[job_id] = None if response.status_code == 200 else str(_error(gateway, f"{action} {job_id}", response))
            except httpx.HTTPError as exc:
                outcome[job_id] = f"gateway {gateway.name!r}: {action} {job_id}: {exc}"
    return outcome


def find_job_by_name(jobs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    matches = [j for j in jobs if j.get("name") == name]
    return matches[0] if len(matches) == 1 else None


def schedule_text(task: Any, zone: str | None) -> tuple[str | None, str | None]:
    """Hermes's schedule string for a task's schedule, or (None, why it has none)."""
    from agent_pipelines.catalog.model import (
        CronScheduleSpec,
        IntervalScheduleSpec,
        OneShotScheduleSpec,
    )

    schedule = task.schedule
    if isinstance(schedule, CronScheduleSpec):
        if schedule.offset:
            return None, f"cron offset {duration_text(schedule.offset)}: Hermes has no offset"
        if zone and schedule.timezone != zone:
            return None, f"cron in {schedule.timezone}, Hermes evaluates cron in {zone}"
        fields = schedule.cron.split()
        if len(fields) == 6:
            fields = [*fields[1:], fields[0]]
        if not all(re.match(r"^[\d\*\-,/]+$", f) for f in fields[:5]):
            return None, f"cron {schedule.cron!r}: Hermes accepts digits, '*', '-', ',' and '/' only"
        return " ".join(fields), None
    if isinstance(schedule, IntervalScheduleSpec):
        if schedule.every % 60:
            return None, f"every {duration_text(schedule.every)}: Hermes intervals are whole minutes"
        return f"every {int(schedule.every // 60)}m", None
    if isinstance(schedule, OneShotScheduleSpec):
        return schedule.at.isoformat(), None
    return None, "no schedule"


def create_job(gateway: GatewaySpec, body: dict[str, Any]) -> dict[str, Any]:
    with _client(gateway) as client:
        response = client.post("/api/jobs", json=body)
    if response.status_code != 200:
        raise _error(gateway, "POST /api/jobs", response)
    return response.json()["job"]
