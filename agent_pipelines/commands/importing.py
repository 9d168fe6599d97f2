"""`agent-pipelines import` and `export`: bring OpenClaw and Hermes cron jobs into the catalog,
and hand them back.

`import` reads every job of one gateway, a `--gateways` file or a catalog `--fleet`, maps each
to a task, writes the tasks into catalog YAML (validated first, written atomically; re-running
updates what it wrote and adds nothing twice), prints what could not be mapped and why, job by
job, and with `--disable-source` turns the imported jobs off in the agent, only once the
catalog is written. `export` turns them back on (re-creating any that were deleted): a rollback.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from agent_pipelines.catalog.loader import default_catalog_path
from agent_pipelines.importers.gateways import (
    GatewayError,
    GatewaySpec,
    check_unique,
    fleet_gateways,
    load_gateways,
)

KINDS = ("openclaw", "hermes")
#: Gateways read (and their jobs turned off) at once.
GATEWAY_PARALLELISM = 8


# -------------------------------------------------------------------------------------------
# Options shared by import and export
# -------------------------------------------------------------------------------------------


def _gateway_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--gateways", "gateways_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      help="YAML list of gateways (and fleet entries) to work on at once."),
        click.option("--fleet", default=None, help="A catalog fleet of this kind: one gateway per node."),
        click.option("--name", default=None, help="One gateway: the catalog agent its jobs run on (lower_snake_case)."),
        click.option("--base-url", default=None, help="One gateway: its HTTP URL (default per kind)."),
        click.option("--auth-env", default=None, help="Variable holding the gateway's token (never the token itself)."),
        click.option("--auth-file", default=None, help="File holding the gateway's token."),
        click.option("--cli", "cli_command", default=None, help="OpenClaw: how to run its CLI, e.g. 'openclaw'."),
        click.option("--state-dir", default=None, help="OpenClaw: its state dir (~/.openclaw); Hermes: its HERMES_HOME."),
        click.option("--timezone", default=None, help="The gateway host's time zone, for cron jobs without one."),
        click.option("--catalog", "catalog_path", type=click.Path(path_type=Path), default=None,
                      help="Catalog directory (default: $AGENT_PIPELINES_CATALOG, else catalog/)."),
        click.option("--dry-run", is_flag=True, help="Print what would change; change nothing."),
        click.option("--json", "as_json", is_flag=True, help="The report as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _gateways(kind: str, opts: dict[str, Any], catalog_root: Path, owner: str | None = None,
              agent_ids: tuple[str, ...] = ()) -> list[GatewaySpec]:
    single = {k: opts[k] for k in ("name", "base_url", "auth_env", "auth_file", "state_dir", "timezone")}
    single["cli"] = opts.get("cli_command")
    sources = sum(bool(x) for x in (opts.get("gateways_file"), opts.get("fleet"), opts.get("name")))
    if sources != 1:
        raise click.UsageError("give exactly one of --gateways FILE, --fleet NAME or --name (one gateway)")
    shared = {"owner": owner, "cli": single["cli"], "timezone": single["timezone"],
              "agent_ids": list(agent_ids) or None}
    if not opts.get("name"):
        allowed = ("cli", "timezone") if opts.get("fleet") else ()
        extra = [f"--{k.replace('_', '-')}" for k, v in single.items() if v and k not in allowed]
        extra += ["--agent-id"] if agent_ids and not opts.get("fleet") else []
        if extra:
            where = "the fleet's settings" if opts.get("fleet") else "each entry of the file"
            raise click.UsageError(f"{', '.join(extra)} set(s) one gateway: with --gateways/--fleet, {where} say(s) it")
    try:
        if opts.get("gateways_file"):
            found = load_gateways(opts["gateways_file"])
            chosen = [g for g in found if g.kind == kind]
            if not chosen:
                raise click.UsageError(f"{opts['gateways_file']} lists no {kind} gateway")
            return [g if g.owner or not owner else GatewaySpec.model_validate({**g.model_dump(), "owner": owner}) for g in chosen]
        if opts.get("fleet"):
            from agent_pipelines.catalog.loader import load_catalog

            return fleet_gateways(load_catalog(catalog_root), opts["fleet"], **shared)
        values = {k: v for k, v in {**single, **shared}.items() if v not in (None, (), [])}
        return check_unique([GatewaySpec.model_validate({"kind": kind, **values})])
    except GatewayError as exc:
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:  # pydantic's ValidationError
        errors = getattr(exc, "errors", None)
        message = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(exc)
        raise click.UsageError(message) from None


def _catalog_root(path: Path | None) -> Path:
    root = (path or default_catalog_path()).resolve()
    if root.exists() and not root.is_dir():
        raise click.UsageError(f"{root} is a file: import writes into a catalog directory")
    return root


def _zone_for(gateway: GatewaySpec) -> tuple[str, bool]:
    from agent_pipelines.importers import hermes
    from agent_pipelines.importers.mapping import local_zone

    zone = hermes.configured_zone(gateway) if gateway.kind == "hermes" else gateway.timezone
    return (zone, False) if zone else (local_zone(), True)


def _module(kind: str) -> Any:
    from agent_pipelines.importers import hermes, openclaw

    return openclaw if kind == "openclaw" else hermes


@dataclass
class _GatewayRun:
    gateway: GatewaySpec
    source: str = ""
    error: str | None = None
    disabled: dict[str, str | None] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------
# import
# -------------------------------------------------------------------------------------------


@click.group("import")
def import_group() -> None:
    """Bring an agent product's scheduled jobs into the catalog as tasks."""


def _import_command(kind: str) -> click.Command:
    product = {"openclaw": "an OpenClaw gateway", "hermes": "a Hermes Agent installation"}[kind]

    @click.command(kind)
    @_gateway_options
    @click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Write every new task into this file (inside the catalog); default imported/<gateway>.yaml.")
    @click.option("--owner", default=None, help="Owner of the new tasks (a team or an email; default: 'imported').")
    @click.option("--agent-id", "agent_ids", multiple=True, help="OpenClaw: only jobs of this agent id (repeatable).")
    @click.option("--notify-channel", "notify_channels", multiple=True, metavar="SOURCE=CHANNEL",
                  help="Route failure alerts of a delivery target (`telegram`, or `telegram:<chat>`) to this catalog notification channel.")
    @click.option("--disable-source", is_flag=True, help="Once the catalog is written, turn the imported jobs off in the agent (never deletes them).")
    def command(output: Path | None, owner: str | None, agent_ids: tuple[str, ...], notify_channels: tuple[str, ...],
                disable_source: bool, **opts: Any) -> None:
        run_import(kind, opts, output=output, owner=owner, agent_ids=agent_ids, notify_channels=notify_channels,
                   disable_source=disable_source)

    command.help = (
        f"Import the cron jobs of {product} (or many, with --gateways/--fleet) as catalog tasks.\n\n"
        "Each job becomes a task named <agent>_<job>; what cannot be mapped is listed job by job with the reason. "
        "Re-running it updates the tasks it wrote (and leaves tasks edited by hand alone); it never adds a job twice."
    )
    return command


def _channel_map(pairs: tuple[str, ...], known: set[str]) -> Any:
    from agent_pipelines.importers.mapping import ChannelMap

    explicit: dict[str, str] = {}
    for pair in pairs:
        source, sep, channel = pair.partition("=")
        if not sep or not source or not channel:
            raise click.UsageError(f"--notify-channel wants SOURCE=CHANNEL, got {pair!r}")
        if channel not in known:
            raise click.UsageError(f"--notify-channel {pair}: the catalog has no notification channel {channel!r}"
                                   + (f" (it has: {', '.join(sorted(known))})" if known else ""))
        explicit[source] = channel
    return ChannelMap(explicit, frozenset(known))


def run_import(kind: str, opts: dict[str, Any], *, output: Path | None, owner: str | None, agent_ids: tuple[str, ...],
               notify_channels: tuple[str, ...], disable_source: bool) -> None:
    from agent_pipelines.importers.catalog_file import (
        CatalogState,
        CatalogWriteError,
        lock_for,
        plan_import,
        validate_texts,
        write_atomic,
    )

    root = _catalog_root(opts["catalog_path"])
    gateways = _gateways(kind, opts, root, owner=owner, agent_ids=agent_ids)
    module = _module(kind)
    if output is not None:
        output = output.resolve()
        if not output.is_relative_to(root):
            raise click.UsageError(f"--output {output} is outside the catalog {root}: its tasks would not run")
        if output.suffix not in (".yaml", ".yml"):
            raise click.UsageError("--output must be a .yaml or .yml file")
    now = dt.datetime.now(dt.timezone.utc)
    results: list[Any] = []
    agents: list[Any] = []
    with lock_for(root) if not opts["dry_run"] else _no_lock():
        state = CatalogState.scan(root)
        channels = _channel_map(notify_channels, state.channels)
        runs = [_GatewayRun(gateway) for gateway in gateways]

        def read(run: _GatewayRun) -> list[dict[str, Any]] | None:
            try:
                jobs, run.source = module.read_jobs(run.gateway)
                return jobs
            except GatewayError as exc:
                run.error = str(exc)
                return None

        with ThreadPoolExecutor(max_workers=min(GATEWAY_PARALLELISM, len(runs))) as pool:
            read_jobs = list(pool.map(read, runs))
        for run, jobs in zip(runs, read_jobs, strict=True):
            if jobs is None:
                continue
            zone, guessed = _zone_for(run.gateway)
            mapped = module.map_jobs(jobs, run.gateway, channels, now, zone, guessed)
            results += mapped
            agents += module.agents_for(run.gateway, mapped)
        output_for = {g.name: output or root / "imported" / f"{g.name}.yaml" for g in gateways}
        header = (f"# Tasks imported from {kind} by `agent-pipelines import {kind}`.\n"
                  "# Tasks tagged imported_from are rewritten by the next import unless edited by hand;\n"
                  "# lines starting with '# imported:' belong to the task below them.")
        try:
            plan = plan_import(root, results, agents, output_for, header)
            added, existing = validate_texts(root, plan.texts)
        except CatalogWriteError as exc:
            raise click.ClickException(str(exc)) from None
        if opts["dry_run"]:
            for path in plan.changed:
                click.echo(f"# ---- {path} (would be written)", err=opts["as_json"])
                click.echo(plan.texts[path], nl=False, err=opts["as_json"])
        if added:
            _report(kind, runs, results, plan, added, existing, opts["as_json"], written=False, dry_run=opts["dry_run"])
            click.echo(f"the imported tasks would break the catalog ({len(added)} new problem(s)): nothing written", err=True)
            sys.exit(1)
        if opts["dry_run"]:
            _report(kind, runs, results, plan, added, existing, opts["as_json"], written=False, dry_run=True)
            sys.exit(1 if any(r.error for r in runs) else 0)
        imported = [r for r in results if r.status == "imported" and r.task_name]
        _write_and_disable(kind, root, plan, runs, imported, disable_source, module, write_atomic)
    _report(kind, runs, results, plan, added, existing, opts["as_json"], written=True, dry_run=False)
    failed = any(r.error for r in runs) or any(err for r in runs for err in r.disabled.values())
    sys.exit(1 if failed else 0)


def _write_and_disable(kind: str, root: Path, plan: Any, runs: list[_GatewayRun], imported: list[Any],
                       disable_source: bool, module: Any, write_atomic: Callable[[Path, str], None]) -> None:
    from agent_pipelines.catalog.loader import load_catalog
    from agent_pipelines.commands.common import access_checked, opened_store

    names = sorted({r.task_name for r in imported if r.action in ("new", "updated")})
    to_disable = {run.gateway.name: [r.job_id for r in imported if r.gateway == run.gateway.name and r.source_enabled]
                  for run in runs if not run.error}
    if not disable_source:
        to_disable = {}
    if not plan.changed and not any(to_disable.values()):
        return  # nothing to write, nothing to turn off: nothing to audit either
    details = {
        "kind": kind, "gateways": [r.gateway.name for r in runs],
        "files": [str(p) for p in plan.changed], "new": sum(r.action == "new" for r in imported),
        "updated": sum(r.action == "updated" for r in imported),
        "disable_source": sum(len(ids) for ids in to_disable.values()),
    }

    def disable(run: _GatewayRun) -> None:
        job_ids = to_disable.get(run.gateway.name) or []
        if job_ids:
            try:
                run.disabled = module.set_enabled(run.gateway, job_ids, False)
            except GatewayError as exc:
                run.disabled = {job_id: str(exc) for job_id in job_ids}

    with opened_store() as store, access_checked(store, load_catalog(root), f"catalog.import.{kind}", names or ["*"], **details):
        for path in plan.changed:
            write_atomic(path, plan.texts[path])
        if to_disable:
            with ThreadPoolExecutor(max_workers=min(GATEWAY_PARALLELISM, len(runs))) as pool:
                list(pool.map(disable, runs))


class _no_lock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _describe(result: Any) -> str:
    from agent_pipelines.importers.mapping import schedule_model

    try:
        return schedule_model(result.task["schedule"]).describe() if result.task else ""
    except (ValueError, KeyError):
        return ""


def _report(kind: str, runs: list[_GatewayRun], results: list[Any], plan: Any, added: list[Any], existing: list[Any],
            as_json: bool, *, written: bool, dry_run: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "kind": kind, "dry_run": dry_run, "written": written,
            "files": [str(p) for p in plan.changed],
            "gateways": [{"name": r.gateway.name, "source": r.source, "error": r.error,
                          "disabled": {k: ("ok" if v is None else v) for k, v in r.disabled.items()}} for r in runs],
            "jobs": [r.as_json() for r in results],
            "new_agents": plan.new_agents,
            "problems": [str(p) for p in added],
        }, indent=2))
        return
    for run in runs:
        mine = [r for r in results if r.gateway == run.gateway.name]
        if run.error:
            click.echo(f"{kind} gateway {run.gateway.name}: NOT READ: {run.error}")
            continue
        imported = [r for r in mine if r.status == "imported"]
        counts = {a: sum(r.action == a for r in imported) for a in ("new", "updated", "unchanged", "kept")}
        click.echo(
            f"{kind} gateway {run.gateway.name} ({run.source}): {len(mine)} job(s), {len(imported)} imported "
            f"({counts['new']} new, {counts['updated']} updated, {counts['unchanged']} unchanged, {counts['kept']} kept as edited), "
            f"{sum(r.status == 'not_mapped' for r in mine)} not mapped, {sum(r.status == 'skipped' for r in mine)} skipped"
        )
        for r in sorted(mine, key=lambda r: (r.status != "imported", r.task_name or "", r.job_name)):
            label = f"{r.job_id} ({r.job_name})"
            if r.status == "imported":
                state = "" if r.task and r.task.get("enabled", True) else ", disabled"
                click.echo(f"  {r.action or 'imported':9} {r.task_name} <- {label}: {_describe(r)}{state}")
                for note in r.notes:
                    click.echo(f"            - {note}")
                if r.job_id in run.disabled:
                    outcome = run.disabled[r.job_id]
                    click.echo("            source job disabled" if outcome is None else f"            SOURCE JOB NOT DISABLED: {outcome}")
            else:
                click.echo(f"  {'NOT MAPPED' if r.status == 'not_mapped' else 'skipped':9} {label}: {r.reason}")
    for path in plan.changed:
        click.echo(f"{'would write' if not written else 'wrote'} {path}")
    if not plan.changed:
        click.echo("catalog already up to date")
    if existing:
        click.echo(f"note: the catalog already had {len(existing)} problem(s) before this import (`agent-pipelines validate`)")
    for problem in added:
        click.echo(f"PROBLEM {problem}", err=True)
    both = [r for r in results if r.status == "imported" and r.source_enabled and r.task_name
            and not any(run.disabled.get(r.job_id, "x") is None for run in runs if run.gateway.name == r.gateway)]
    if both and written:
        click.echo(f"{len(both)} job(s) are enabled both in the agent and here: each fires twice until you "
                   "run the import again with --disable-source")


# -------------------------------------------------------------------------------------------
# export
# -------------------------------------------------------------------------------------------


@click.group("export")
def export_group() -> None:
    """Hand imported tasks back to the agent product they came from (a rollback)."""


def _export_command(kind: str) -> click.Command:
    @click.command(kind)
    @_gateway_options
    @click.option("--task", "task_names", multiple=True, help="Only these imported tasks (repeatable).")
    @click.option("--disable-tasks", is_flag=True, help="Once the jobs are back on, set the tasks to enabled: false.")
    def command(task_names: tuple[str, ...], disable_tasks: bool, **opts: Any) -> None:
        run_export(kind, opts, task_names=task_names, disable_tasks=disable_tasks)

    command.help = (
        f"Turn the imported jobs back on in {kind} (re-creating deleted ones), from the catalog's imported tasks.\n\n"
        "Idempotent: a job already on is left alone, a re-created job is found again by its name or declaration key."
    )
    return command


def run_export(kind: str, opts: dict[str, Any], *, task_names: tuple[str, ...], disable_tasks: bool) -> None:
    from agent_pipelines.catalog.loader import load_catalog
    from agent_pipelines.commands.common import access_checked, opened_store
    from agent_pipelines.importers.catalog_file import (
        CatalogState,
        CatalogWriteError,
        lock_for,
        set_task_enabled,
        validate_texts,
        write_atomic,
    )
    from agent_pipelines.importers.export import apply_all, plan_export

    root = _catalog_root(opts["catalog_path"])
    gateways = _gateways(kind, opts, root)
    with lock_for(root) if not opts["dry_run"] else _no_lock():
        catalog = load_catalog(root)
        state = CatalogState.scan(root)
        actions = plan_export(kind, gateways, catalog, state, set(task_names) or None)
        unknown = set(task_names) - {a.task for a in actions}
        if unknown:
            raise click.UsageError(f"not imported {kind} tasks of these gateways: {', '.join(sorted(unknown))}")
        if not opts["dry_run"]:
            names = sorted({a.task for a in actions})
            with opened_store() as store, access_checked(store, catalog, f"catalog.export.{kind}", names or ["*"],
                                                         gateways=[g.name for g in gateways], disable_tasks=disable_tasks):
                apply_all(actions)
                done = [a.task for a in actions if a.ok and a.task_enabled]
                if disable_tasks and done:
                    try:
                        texts = set_task_enabled(root, done, False)
                        added, _ = validate_texts(root, texts)
                    except CatalogWriteError as exc:
                        raise click.ClickException(str(exc)) from None
                    if added:
                        raise click.ClickException("disabling the tasks would break the catalog: " + "; ".join(map(str, added)))
                    for path, text in texts.items():
                        write_atomic(path, text)
                    for action in actions:
                        if action.task in done:
                            action.messages.append("task set to enabled: false")
    if opts["as_json"]:
        click.echo(json.dumps([a.as_json() for a in actions], indent=2))
    else:
        for action in actions:
            click.echo(action.line(opts["dry_run"]))
        if not actions:
            click.echo(f"no imported {kind} tasks for these gateways")
    sys.exit(1 if any(not a.ok for a in actions) else 0)


for _kind in KINDS:
    import_group.add_command(_import_command(_kind))
    export_group.add_command(_export_command(_kind))

