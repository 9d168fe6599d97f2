"""OpenClaw's cron jobs ("automations"): read them, map them to tasks, turn them off and on.

Jobs are read and changed through the gateway's own RPC (`cron.list`, `cron.update`,
`cron.add`, see `openclaw_rpc`), or, when the gateway entry names a `cli`, through OpenClaw's
CLI (`openclaw cron list --all --json`, `openclaw gateway call cron.update ...`), which gets
the gateway's URL and token from its environment, never its command line. When the gateway
cannot be reached and the entry names its `state_dir`, jobs are read from the state database
there (`state/openclaw.sqlite`, table `cron_jobs`; before 2026.6.1 `cron/jobs.json`),
read-only. Jobs are never deleted.

The job format is OpenClaw 2026.9's `CronJobSchema` (packages/gateway-protocol): `schedule`
{kind: at|every|cron|on-exit|stream}, `payload` {kind: agentTurn|systemEvent|command|script|
heartbeat}, `sessionTarget`, `delivery`, `failureAlert`, `state.nextRunAtMs`. A cron job's
top-of-hour runs are staggered by a stable per-job offset (sha256 of the job id modulo
`staggerMs`, default 5 min for `0 * ...` expressions), which becomes the schedule's `offset`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_pipelines.importers import openclaw_rpc
from agent_pipelines.importers.gateways import GatewayError, GatewaySpec
from agent_pipelines.importers.mapping import (
    AgentEntry,
    ChannelMap,
    JobResult,
    agent_name,
    check_next_run,
    duration_text,
    from_ms,
    iso,
    literal_prompt,
    notify_block,
    checked_cron,
)

KIND = "openclaw"
CLI_TIMEOUT_S = 180.0
#: Parallel CLI calls when turning many jobs off or on (each is a Node process, ~1-2 s of CPU).
CLI_PARALLELISM = 4
#: Jobs OpenClaw owns itself (heartbeat, skill review): never imported.
SYSTEM_DECLARATION_PREFIXES = ("heartbeat:", "skill-collection-review:")
DEFAULT_TOP_OF_HOUR_STAGGER_MS = 300_000
#: Jobs `export` re-creates carry `agent-pipelines:<task>` as their declaration key.
DECLARATION_PREFIX = "agent-pipelines:"
#: OpenClaw bounds an isolated agent turn with a 60-minute watchdog unless timeoutSeconds says otherwise.
DEFAULT_TURN_TIMEOUT_S = 3600
_DROPPED_ENV_PREFIXES = ("OPENCLAW_", "CLAWHUB_")

_PAYLOAD_REASONS = {
    "systemEvent": "payload systemEvent: its text is queued into the agent's main session as a system "
    "event, with no model turn of its own; agent_pipelines sends prompts as agent turns (make it an "
    "agentTurn job, or write the task by hand, if a turn is what you want)",
    "command": "payload command: a shell command run on the gateway host, no agent turn",
    "script": "payload script: JavaScript run inside OpenClaw's scheduler, no agent turn",
    "heartbeat": "payload heartbeat: wakes OpenClaw's own heartbeat, no prompt of its own",
}


# -------------------------------------------------------------------------------------------
# The CLI
# -------------------------------------------------------------------------------------------


def cli_env(gateway: GatewaySpec, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV_PREFIXES)}
    env.update(
        OPENCLAW_GATEWAY_URL=openclaw_rpc.ws_url(gateway.base_url or ""),
        OPENCLAW_NO_AUTO_UPDATE="1",
        OPENCLAW_HIDE_BANNER="1",
        OPENCLAW_SUPPRESS_NOTES="1",
        NO_COLOR="1",
    )
    if token:
        env["OPENCLAW_GATEWAY_TOKEN"] = token
    env.update(gateway.env)
    return env


def run_cli(gateway: GatewaySpec, args: Sequence[str], *, token: str | None = None) -> Any:
    """Run `<cli> <args> --json` against the gateway; its JSON answer, or GatewayError."""
    if not gateway.cli:
        raise GatewayError(f"gateway {gateway.name!r}: no `cli` configured to reach OpenClaw")
    token = token if token is not None else gateway.token()
    argv = [*gateway.cli, *args, "--json"]
    try:
        proc = subprocess.run(argv, env=cli_env(gateway, token), capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatewayError(f"gateway {gateway.name!r}: `{' '.join(argv[:len(gateway.cli) + 2])}` failed: {exc}") from None
    try:
        answer = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        answer = None
    if proc.returncode != 0 or answer is None or (isinstance(answer, dict) and answer.get("ok") is False):
        message = ""
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            message = str(answer["error"].get("message", ""))
        message = message or (proc.stderr.strip() or proc.stdout.strip())[-800:]
        if token:
            message = message.replace(token, "***")
        raise GatewayError(f"gateway {gateway.name!r}: openclaw {' '.join(args[:2])} failed: {message}")
    return answer


# -------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------


def read_jobs(gateway: GatewaySpec) -> tuple[list[dict[str, Any]], str]:
    """Every job (disabled ones too) and where they were read from."""
    try:
        if gateway.cli:
            answer = run_cli(gateway, ["cron", "list", "--all"])
            jobs = answer.get("jobs") if isinstance(answer, dict) else None
            if not isinstance(jobs, list):
                raise GatewayError(f"gateway {gateway.name!r}: `openclaw cron list` answered without a jobs list")
            return jobs, f"{gateway.base_url} via openclaw cron list"
        return openclaw_rpc.run(gateway, openclaw_rpc.list_jobs), f"{gateway.base_url} via cron.list"
    except GatewayError as exc:
        if not gateway.state_dir:
            raise
        jobs, where = read_state_dir(Path(gateway.state_dir).expanduser())
        return jobs, f"{where} (the gateway could not be read: {exc})"


def read_state_dir(state_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """Jobs from the shared SQLite state database (read-only), or the legacy jobs.json."""
    database = state_dir / "state" / "openclaw.sqlite"
    if database.is_file():
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='cron_jobs'").fetchone()
            rows = conn.execute(
                "SELECT job_json, state_json FROM cron_jobs ORDER BY store_key, sort_order, job_id"
            ).fetchall() if has_table else []
        except sqlite3.Error as exc:
            raise GatewayError(f"{database}: cannot read cron_jobs: {exc}") from None
        finally:
            conn.close()
        if has_table:
            jobs = []
            for job_json, state_json in rows:
                job = json.loads(job_json)
                job["state"] = {**(job.get("state") or {}), **json.loads(state_json or "{}")}
                jobs.append(job)
            return jobs, str(database)
    legacy = state_dir / "cron" / "jobs.json"
    if legacy.is_file():
        data = json.loads(legacy.read_text(encoding="utf-8"))
        jobs = data.get("jobs", []) if isinstance(data, dict) else data
        return [j for j in jobs if isinstance(j, dict)], str(legacy)
    raise GatewayError(f"{state_dir}: no OpenClaw cron store (state/openclaw.sqlite or cron/jobs.json)")


# -------------------------------------------------------------------------------------------
# Mapping
# -------------------------------------------------------------------------------------------


def stagger_offset_ms(job_id: str, schedule: dict[str, Any]) -> int:
    """OpenClaw's stable per-job stagger (src/cron/stagger.ts, jobs-scheduling.ts)."""
    explicit = schedule.get("staggerMs")
    if isinstance(explicit, (int, float)) and not isinstance(explicit, bool) and explicit >= 0:
        stagger = int(explicit)
    else:
        stagger = DEFAULT_TOP_OF_HOUR_STAGGER_MS if _top_of_hour(str(schedule.get("expr", ""))) else 0
    if stagger <= 1:
        return 0
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % stagger


def _top_of_hour(expr: str) -> bool:
    fields = expr.split()
    if len(fields) == 6:
        if fields[0] != "0":
            return False
        fields = fields[1:]
    if len(fields) != 5 or fields[0] != "0":
        return False
    parts = fields[1].split(",")
    pattern = re.compile(r"^(?:\d+|\d+-\d+)(?:/\d+)?$|^[*?](?:/\d+)?$")
    return all(pattern.match(p) for p in parts) and any(p.startswith(("*", "?")) for p in parts)


def _target_text(channel: Any, to: Any, thread: Any = None, account: Any = None) -> str:
    parts = [str(channel or "last")]
    if to:
        parts.append(str(to))
    if thread not in (None, ""):
        parts.append(f"(thread {thread})")
    if account:
        parts.append(f"(account {account})")
    return " ".join(parts)


class _Context:
    def __init__(self, gateway: GatewaySpec, channels: ChannelMap, now: dt.datetime, zone: str, zone_guessed: bool) -> None:
        self.gateway, self.channels, self.now, self.zone, self.zone_guessed = gateway, channels, now, zone, zone_guessed


def map_job(job: dict[str, Any], ctx: _Context) -> JobResult:
    job_id = str(job.get("id") or "")
    name = str(job.get("displayName") or job.get("name") or job_id)
    agent_id = job.get("agentId") or job.get("effectiveAgentId") or "main"
    state = job.get("state") or {}
    result = JobResult(
        kind=KIND, gateway=ctx.gateway.name, job_id=job_id, job_name=name, status="imported",
        agent=agent_name(ctx.gateway.name, str(agent_id)), source_enabled=bool(job.get("enabled", True)),
        source_next_run=from_ms(state.get("nextRunAtMs", job.get("nextRunAtMs"))), raw=job,
    )
    declaration = str(job.get("declarationKey") or "")
    if declaration.startswith(DECLARATION_PREFIX):
        result.exported_for = declaration[len(DECLARATION_PREFIX):]
    if declaration.startswith(SYSTEM_DECLARATION_PREFIXES):
        result.status, result.reason = "skipped", f"OpenClaw's own system job (declarationKey {declaration})"
        return result
    if ctx.gateway.agent_ids is not None and str(agent_id) not in ctx.gateway.agent_ids:
        result.status, result.reason = "skipped", f"agent {agent_id!r} is not in the gateway's agent_ids"
        return result
    payload = job.get("payload") or {}
    kind = payload.get("kind")
    if kind != "agentTurn":
        return result.not_mapped(_PAYLOAD_REASONS.get(str(kind), f"payload kind {kind!r} is not an agent turn"))
    message = str(payload.get("message") or "")
    if not message.strip():
        return result.not_mapped("agentTurn payload without a message")
    if job.get("trigger"):
        return result.not_mapped(
            "condition trigger: a script inside OpenClaw decides at each occurrence whether the job fires"
        )
    schedule = _schedule(job, result, ctx)
    if schedule is None:
        return result

    task: dict[str, Any] = {}
    description = name if not job.get("description") else f"{name}: {job['description']}"
    task["description"] = description
    task["owner"] = ctx.gateway.owner or "imported"
    task["agent"] = result.agent
    task["schedule"] = schedule
    task["misfire"] = {"policy": "latest"}  # OpenClaw runs missed slots once at start-up
    if "at" not in schedule:
        task["overload"] = "skip_while_running"  # OpenClaw skips a slot while the job's last run goes on
    task["prompt"] = literal_prompt(message)
    task["session"] = _session(job.get("sessionTarget"), result)
    timeout = payload.get("timeoutSeconds")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        task["timeout"] = duration_text(float(timeout))
    else:
        task["timeout"] = duration_text(DEFAULT_TURN_TIMEOUT_S)
        if timeout == 0:
            result.notes.append("timeoutSeconds 0 (no scheduler time limit) becomes 1h, OpenClaw's own watchdog")
    _payload_notes(payload, result)
    notify = _delivery(job, result, ctx)
    if notify:
        task["notify"] = notify
    if job.get("pacing"):
        result.notes.append(f"pacing {job['pacing']} not carried: the task keeps its fixed schedule")
    task["enabled"] = result.source_enabled
    result.task = task
    check_next_run(result, "OpenClaw")
    return result


def _schedule(job: dict[str, Any], result: JobResult, ctx: _Context) -> dict[str, Any] | None:
    schedule = job.get("schedule") or {}
    kind = schedule.get("kind")
    if kind == "cron":
        expr = str(schedule.get("expr") or "").strip()
        fields = expr.split()
        if "+" in expr:
            result.not_mapped(f"cron {expr!r} uses croner's `+` day-of-week modifier (both day fields must match), "
                              "which croniter does not read")
            return None
        if len(fields) not in (5, 6):
            result.not_mapped(f"cron {expr!r} has {len(fields)} fields; 5, or 6 with seconds first, are imported")
            return None
        zone = schedule.get("tz")
        spec: dict[str, Any] = {"cron": " ".join(fields)}
        if zone:
            spec["timezone"] = zone
        else:
            spec["timezone"] = ctx.zone
            result.notes.append(
                f"no time zone on the job (OpenClaw uses the gateway host's): {ctx.zone} "
                + ("assumed, this machine's; set `timezone:` on the gateway entry if the host differs" if ctx.zone_guessed else "from the gateway entry")
            )
        offset = stagger_offset_ms(result.job_id, schedule)
        if offset:
            spec["offset"] = duration_text(offset / 1000)
        return checked_cron(result, expr, spec)
    if kind == "every":
        every_ms = schedule.get("everyMs")
        if not isinstance(every_ms, (int, float)) or isinstance(every_ms, bool) or every_ms < 1000:
            result.not_mapped(f"interval everyMs={every_ms!r}: intervals under 1 s are not imported")
            return None
        anchor = result.source_next_run or from_ms(schedule.get("anchorMs")) or from_ms(job.get("createdAtMs"))
        spec = {"every": duration_text(every_ms / 1000)}
        if anchor is not None:
            spec["anchor"] = iso(anchor)
        if (job.get("state") or {}).get("lastRunAtMs") is not None:
            result.notes.append(
                "OpenClaw counts an interval from the last run's start (it drifts when runs start late); "
                "here it stays on the grid of its next run"
            )
        return spec
    if kind == "at":
        at = str(schedule.get("at") or "")
        try:
            moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            result.not_mapped(f"one-shot time {at!r} is not an ISO timestamp")
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        if moment <= ctx.now:
            ran = (job.get("state") or {}).get("lastRunAtMs") is not None
            result.not_mapped(
                f"one-shot time {iso(moment)} has passed" + (" (it ran)" if ran else " without a run; OpenClaw catches it up itself")
            )
            return None
        return {"at": iso(moment)}
    if kind in ("on-exit", "stream"):
        result.not_mapped(f"schedule {kind}: event-driven by a command OpenClaw supervises, no time schedule")
        return None
    result.not_mapped(f"schedule kind {kind!r} is not a time schedule")
    return None


def _session(target: Any, result: JobResult) -> str:
    target = str(target or "isolated")
    if target == "isolated":
        return "isolated"
    where = {
        "main": "the agent's main session",
        "current": "the conversation it was created from",
    }.get(target, f"the persistent session {target.removeprefix('session:')!r}")
    result.notes.append(f"ran in {where}; here it keeps one conversation of its own across runs (session: task)")
    return "task"


def _payload_notes(payload: dict[str, Any], result: JobResult) -> None:
    if payload.get("model"):
        result.notes.append(f"model override {payload['model']!r} not carried: the agent's default model answers")
    if payload.get("fallbacks") is not None:
        result.notes.append(f"model fallbacks {payload['fallbacks']!r} not carried")
    if payload.get("thinking"):
        result.notes.append(f"thinking level {payload['thinking']!r} not carried")
    tools = payload.get("toolsAllow")
    if tools is not None and list(tools) != ["*"] and not payload.get("toolsAllowIsDefault"):
        result.notes.append(f"tool allow-list {tools!r} not carried: the agent's own tool policy applies")
    if payload.get("lightContext"):
        result.notes.append("lightContext (lightweight bootstrap context) not carried")


def _delivery(job: dict[str, Any], result: JobResult, ctx: _Context) -> dict[str, Any] | None:
    channels: list[str] = []
    delivery = job.get("delivery") or {}
    mode = delivery.get("mode")
    if mode == "announce":
        target = _target_text(delivery.get("channel"), delivery.get("to"), delivery.get("threadId"), delivery.get("accountId"))
        result.comments.append(f"delivery: announce to {target}")
        result.notes.append(f"output delivery (announce to {target}) not carried: outputs stay in Dagster and the execution records")
        _failure_route(delivery.get("channel"), delivery.get("to"), f"announce target {target}", result, ctx, channels,
                       alerts_off=job.get("failureAlert") is False)
    elif mode == "webhook":
        result.comments.append(f"delivery: webhook POST to {delivery.get('to')}")
        result.notes.append(f"output delivery (webhook to {delivery.get('to')}) not carried")
    for label, route in (("failure destination", delivery.get("failureDestination")), ("failure alert", job.get("failureAlert"))):
        if isinstance(route, dict) and (route.get("channel") or route.get("to")):
            target = _target_text(route.get("channel"), route.get("to"), None, route.get("accountId"))
            result.comments.append(f"{label}: {route.get('mode', 'announce')} to {target}")
            channel = "webhook" if route.get("mode") == "webhook" else route.get("channel")
            _failure_route(channel, route.get("to"), f"{label} {target}", result, ctx, channels)
    completion = delivery.get("completionDestination")
    if isinstance(completion, dict) and completion.get("to"):
        result.comments.append(f"completion webhook: {completion['to']}")
        result.notes.append(f"completion webhook {completion['to']} not carried")
    return notify_block(channels)


def _failure_route(channel: Any, to: Any, label: str, result: JobResult, ctx: _Context, channels: list[str],
                   alerts_off: bool = False) -> None:
    if alerts_off:
        return
    if not channel or channel == "last":
        result.notes.append(f"failure alerts to {label} not carried: 'last' is the agent's latest conversation")
        return
    mapped = ctx.channels.channel_for(str(channel), str(to) if to else None)
    if mapped:
        channels.append(mapped)
    else:
        result.notes.append(
            f"failure alerts to {label} not carried: no catalog notification channel for {channel!r} "
            f"(declare one and pass --notify-channel {channel}=<channel>)"
        )


def map_jobs(jobs: list[dict[str, Any]], gateway: GatewaySpec, channels: ChannelMap, now: dt.datetime,
             zone: str, zone_guessed: bool) -> list[JobResult]:
    ctx = _Context(gateway, channels, now, zone, zone_guessed)
    return [map_job(job, ctx) for job in jobs if isinstance(job, dict)]


def agents_for(gateway: GatewaySpec, results: list[JobResult]) -> list[AgentEntry]:
    """One catalog agent per OpenClaw agent id that has imported jobs."""
    entries: dict[str, AgentEntry] = {}
    for result in results:
        if result.status != "imported" or result.agent is None or result.agent in entries:
            continue
        agent_id = str(result.raw.get("agentId") or result.raw.get("effectiveAgentId") or "main")
        entries[result.agent] = AgentEntry(
            name=result.agent, kind=KIND, base_url=gateway.base_url or "", auth_env=gateway.auth_env,
            auth_file=gateway.auth_file, agent_id=agent_id,
            description=f"OpenClaw gateway {gateway.name}, agent {agent_id} (imported)",
        )
    return list(entries.values())


# -------------------------------------------------------------------------------------------
# Changing jobs (through the gateway; never deleted)
# -------------------------------------------------------------------------------------------


def call_many(gateway: GatewaySpec, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each (method, params) through the gateway: its answer, or the GatewayError it raised."""
    if not calls:
        return []
    if gateway.cli:
        token = gateway.token()

        def one(call: tuple[str, dict[str, Any]]) -> Any:
            try:
                return run_cli(gateway, ["gateway", "call", call[0], "--params", json.dumps(call[1])], token=token)
            except GatewayError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=min(CLI_PARALLELISM, len(calls))) as pool:
            return list(pool.map(one, calls))

    async def work(connection: openclaw_rpc.Connection) -> list[Any]:
        answers: list[Any] = []
        for method, params in calls:
            try:
                answers.append(await connection.call(method, params))
            except GatewayError as exc:
                answers.append(exc)
        return answers

    return openclaw_rpc.run(gateway, work)


def set_enabled(gateway: GatewaySpec, job_ids: Sequence[str], enabled: bool) -> dict[str, str | None]:
    """Enable or disable jobs; job id -> None on success, else the error."""
    answers = call_many(gateway, [("cron.update", {"id": job_id, "patch": {"enabled": enabled}}) for job_id in job_ids])
    return {job_id: (str(a) if isinstance(a, GatewayError) else None) for job_id, a in zip(job_ids, answers, strict=True)}


def add_job(gateway: GatewaySpec, params: dict[str, Any]) -> dict[str, Any]:
    (answer,) = call_many(gateway, [("cron.add", params)])
    if isinstance(answer, GatewayError):
        raise answer
    job = answer.get("job", answer) if isinstance(answer, dict) else {}
    return job if isinstance(job, dict) else {}


def declaration_key(task_name: str) -> str:
    return f"{DECLARATION_PREFIX}{task_name}"


def add_params(task: Any, agent: Any, message: str) -> dict[str, Any] | None:
    """`cron.add` parameters that re-create a task as a job (None: not expressible). The
    declaration key makes a second export find (and reconcile) the same job."""
    from agent_pipelines.catalog.model import (
        CronScheduleSpec,
        IntervalScheduleSpec,
        OneShotScheduleSpec,
    )

    schedule = task.schedule
    if isinstance(schedule, CronScheduleSpec):
        spec: dict[str, Any] = {"kind": "cron", "expr": schedule.cron, "tz": schedule.timezone}
        if not schedule.offset:
            spec["staggerMs"] = 0
    elif isinstance(schedule, IntervalScheduleSpec):
        spec = {"kind": "every", "everyMs": round(schedule.every * 1000)}
        if schedule.anchor is not None:
            spec["anchorMs"] = round(schedule.anchor.timestamp() * 1000)
    elif isinstance(schedule, OneShotScheduleSpec):
        spec = {"kind": "at", "at": schedule.at.isoformat()}
    else:
        return None
    payload: dict[str, Any] = {"kind": "agentTurn", "message": message}
    if task.timeout:
        payload["timeoutSeconds"] = max(1, round(task.timeout))
    params: dict[str, Any] = {
        "name": task.name, "declarationKey": declaration_key(task.name),
        "description": task.description or None, "schedule": spec,
        "sessionTarget": "isolated" if task.session == "isolated" else f"session:{task.name}",
        "wakeMode": "now", "payload": payload, "delivery": {"mode": "none"},
    }
    if isinstance(schedule, OneShotScheduleSpec):
        params["deleteAfterRun"] = False
    agent_id = getattr(agent, "agent_id", None)
    if agent_id:
        params["agentId"] = agent_id
    return {k: v for k, v in params.items() if v is not None}
