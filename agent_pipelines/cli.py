"""`agent-pipelines`: the commands that are not Dagster's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from agent_pipelines.catalog.loader import CATALOG_ENV_VAR, default_catalog_path, load_catalog
from agent_pipelines.commands.common import access_checked, use_default_home


@click.group(help=__doc__)
def main() -> None:
    pass


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
def validate(path: Path | None) -> None:
    """Check a catalog and print every problem with file, line, task and field.

    PATH defaults to $AGENT_PIPELINES_CATALOG, else the example catalog. Exits 1 when there is
    any problem, so it can gate a merge request.
    """
    root = path or default_catalog_path()
    catalog = load_catalog(root)
    for problem in catalog.problems:
        click.echo(str(problem))
    for agent in catalog.agents.values():
        if agent.auth_env and agent.auth_env not in os.environ:
            click.echo(
                f"warning: agent {agent.name!r} reads its token from ${agent.auth_env}, "
                "which is not set in this environment",
                err=True,
            )
    summary = (
        f"{root}: {len(catalog.files)} file(s), {len(catalog.agents)} agent(s), "
        f"{len(catalog.tasks)} valid task(s), {len(catalog.problems)} problem(s)"
    )
    click.echo(summary, err=bool(catalog.problems))
    sys.exit(1 if catalog.problems else 0)


@main.command("demo-agent")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--latency-ms", default=300.0, show_default=True, type=float)
@click.option("--jitter-ms", default=100.0, show_default=True, type=float)
@click.option("--failure-rate", default=0.0, show_default=True, type=float, help="Share of requests answered with HTTP 500.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--capacity", default=None, type=int, help="Requests worked on at once; the rest wait inside (a saturated agent).")
@click.option(
    "--token-env",
    default="DEMO_AGENT_TOKEN",
    show_default=True,
    help="Require `Authorization: Bearer $<this variable>` when the variable is set.",
)
def demo_agent(
    host: str, port: int, latency_ms: float, jitter_ms: float, failure_rate: float, seed: int, capacity: int | None, token_env: str
) -> None:
    """Serve the built-in deterministic demo agent (OpenAI, OpenClaw, Hermes, Dify, HTTP shapes)."""
    from agent_pipelines.demo_agent import DemoAgentConfig, serve

    config = DemoAgentConfig(
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        failure_rate=failure_rate,
        seed=seed,
        token=os.environ.get(token_env) or None,
        capacity=capacity,
    )
    click.echo(f"demo agent on http://{host}:{port} (latency {latency_ms:g}±{jitter_ms:g} ms, failure rate {failure_rate:g})")
    serve(config, host=host, port=port)


@main.group()
def instance() -> None:
    """The Dagster instance in DAGSTER_HOME."""


@instance.command("init")
def instance_init() -> None:
    """Create DAGSTER_HOME and its dagster.yaml (SQLite, or PostgreSQL when $AGENT_PIPELINES_POSTGRES_URL is set)."""
    from agent_pipelines.instance import ensure_instance

    home = ensure_instance()
    click.echo(f"DAGSTER_HOME={home}")


@main.group()
def db() -> None:
    """agent_pipelines' own tables beside the Dagster instance's storage."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate agent_pipelines' tables in the instance's database."""
    from dagster import DagsterInstance

    from agent_pipelines.store import StateStore, url_for_instance

    with DagsterInstance.get() as dagster_instance:
        store = StateStore.for_instance(dagster_instance)
        click.echo(f"agent_pipelines tables are up to date in {_redact(url_for_instance(dagster_instance))}")
        store.engine.dispose()


@main.group()
def pools() -> None:
    """Dagster concurrency pools, one per agent."""


@pools.command("sync")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def pools_sync(path: Path | None) -> None:
    """Limit each agent's pool to its `max_concurrency` steps at once, across all runs."""
    from dagster import DagsterInstance

    catalog = load_catalog(path or default_catalog_path())
    with DagsterInstance.get() as dagster_instance:
        for agent in catalog.agents.values():
            dagster_instance.event_log_storage.set_concurrency_slots(f"agent_{agent.name}", agent.max_concurrency)
            click.echo(f"pool agent_{agent.name}: {agent.max_concurrency}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8788, show_default=True, type=int)
def ingress(host: str, port: int) -> None:
    """Serve the event ingress: external systems POST events to /events/<source>."""
    from agent_pipelines.ingress import serve_ingress

    use_default_home()
    click.echo(f"event ingress on http://{host}:{port}/events/<source>")
    serve_ingress(host=host, port=port)


@main.command()
@click.option("-w", "--workspace", type=click.Path(path_type=Path), default=None, help="Workspace file for dagster-daemon (default: DAGSTER_HOME/workspace.yaml when it exists).")
@click.option("-m", "--module", default="agent_pipelines.definitions", show_default=True, help="Code location module when there is no workspace.")
@click.option("--name", default="", help="A name for this wrapper in logs and in the leadership record.")
def daemon(workspace: Path | None, module: str, name: str) -> None:
    """Run dagster-daemon with failover: start this on two or more machines (or processes)
    against one PostgreSQL instance; exactly one runs the daemon, the others stand by and take
    over within seconds when it dies or is cut off from the database."""
    from agent_pipelines.failover import NeedsPostgres, run_guarded_daemon
    from agent_pipelines.instance import default_home

    home = default_home()
    workspace = workspace or (home / "workspace.yaml" if (home / "workspace.yaml").exists() else None)
    target = ["-w", str(workspace)] if workspace else ["-m", module]
    command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", *target]
    env = dict(os.environ, DAGSTER_HOME=str(home))
    try:
        run_guarded_daemon(home, command, env, Path.cwd(), name=name, say=lambda text: click.echo(f"daemon {name or ''}: {text}".replace("  ", " "), err=True))
    except NeedsPostgres as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def task() -> None:
    """Inspect and control catalog tasks: list, pause, resume, run-now, history."""


def _open_store():  # noqa: ANN202 - returns (instance, store)
    from dagster import DagsterInstance

    from agent_pipelines.store import StateStore

    use_default_home()
    instance = DagsterInstance.get()
    return instance, StateStore.for_instance(instance)


@task.command("list")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def task_list(path: Path | None) -> None:
    """Every task with its trigger, state and last execution."""
    from agent_pipelines.task_status import task_rows

    catalog = load_catalog(path or default_catalog_path())
    instance, store = _open_store()
    with instance:
        rows = task_rows(catalog, store)
    _print_rows(rows)


def _print_rows(rows: list) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


@main.command()
@click.option("--by", type=click.Choice(["task", "agent", "owner"]), default="task", show_default=True)
@click.option("--days", default=7, show_default=True, type=int, help="UTC days back from today")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per row")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def cost(by: str, days: int, as_json: bool, path: Path | None) -> None:
    """Token cost (from the agents' `pricing`) and, for agents and owners, the hours their managed
    agents were up and what those cost (`lifecycle.hourly_cost`), per UTC day."""
    import dataclasses
    import datetime as dt
    import json

    from agent_pipelines.costs import cost_report

    catalog = load_catalog(path or default_catalog_path())
    instance, store = _open_store()
    with instance:
        rows = cost_report(catalog, store, by, days, dt.datetime.now(dt.timezone.utc))
    if as_json:
        for row in rows:
            click.echo(json.dumps({**dataclasses.asdict(row), "day": row.day.isoformat(), "total": row.total}))
        return
    table = [("day", by, "executions", "token cost", "hours up", "uptime cost", "total")]
    table += [
        (r.day.isoformat(), r.group, str(r.executions), f"{r.token_cost:.4f}", f"{r.hours_up:.2f}", f"{r.uptime_cost:.4f}", f"{r.total:.4f}")
        for r in rows
    ]
    _print_rows(table)


@main.group()
def agent() -> None:
    """Inspect agents: list (lifecycle state, next due time, wakes and hours up, load)."""


@agent.command("list")
@click.argument("path", required=False, type=click.Path(path_type=Path))
def agent_list(path: Path | None) -> None:
    """Every agent: always on, or its lifecycle backend and state (asleep, waking, ready,
    draining, failed), its next due time, wakes, cold starts and hours up over the last 24 h, and
    its load: learned limit / max_concurrency, requests in flight and waiting, latency, saturated."""
    import datetime as dt

    from agent_pipelines.lifecycle.report import agent_rows

    catalog = load_catalog(path or default_catalog_path())
    instance, store = _open_store()
    with instance:
        _print_rows(agent_rows(catalog, store, dt.datetime.now(dt.timezone.utc)))


def _control(name: str, action: str, reason: str | None, variables: dict | None = None, event: dict | None = None) -> None:
    from agent_pipelines.control import TaskAction, apply_action

    catalog = load_catalog(default_catalog_path())
    instance, store = _open_store()
    with instance, access_checked(store, catalog, f"task.{action}", [name], unknown_needs_admin=False, stated_reason=reason):
        try:
            click.echo(apply_action(catalog, store, name, TaskAction(action), reason=reason, variables=variables, event=event))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc


@task.command("pause")
@click.argument("name")
@click.option("--reason", default=None)
def task_pause(name: str, reason: str | None) -> None:
    """Stop triggering a task (schedules and events) until it is resumed."""
    _control(name, "pause", reason)


@task.command("resume")
@click.argument("name")
@click.option("--reason", default=None)
def task_resume(name: str, reason: str | None) -> None:
    """Trigger a paused task again from its next due time."""
    _control(name, "resume", reason)


@task.command("run-now")
@click.argument("name")
@click.option("--var", "variables", multiple=True, help="Override a prompt variable: --var topic=AI (value parsed as YAML).")
@click.option("--event", "event", default=None, help='Event tasks: the sample event\'s JSON payload, e.g. \'{"version": "4.2"}\'.')
def task_run_now(name: str, variables: tuple[str, ...], event: str | None) -> None:
    """Run a task once, now, through the daemon (task_scheduler_sensor launches it)."""
    import json

    import yaml

    parsed = {}
    for item in variables:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--var")
        parsed[key] = yaml.safe_load(value)
    payload = None
    if event is not None:
        try:
            payload = json.loads(event)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--event") from exc
        if not isinstance(payload, dict):
            raise click.BadParameter("the payload must be a JSON object", param_hint="--event")
    _control(name, "run_now", None, parsed or None, payload)


@task.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=int)
def task_history(name: str, limit: int) -> None:
    """The task's latest executions: when due (or triggered), status, attempts, lateness, why."""
    from agent_pipelines.history import history_lines

    instance, store = _open_store()
    with instance:
        for line in history_lines(store.executions_for_task(name, limit=limit)):
            click.echo(line)


@main.group()
def prompts() -> None:
    """The prompt registry: versions, diffs, promotion, rollback (every action is recorded)."""


def _registry():  # noqa: ANN202 - (instance, registry)
    from agent_pipelines.prompts.registry import PromptRegistry

    instance, store = _open_store()
    return instance, PromptRegistry(store)


@prompts.command("sync")
def prompts_sync() -> None:
    """Register the catalog's prompts (the catalog_health sensor does this on every change)."""
    instance, registry = _registry()
    catalog = load_catalog(default_catalog_path())
    with instance, access_checked(registry.store, catalog, "prompt.sync", sorted(catalog.tasks)):
        changed = registry.sync_catalog(catalog)
    click.echo(f"registered or re-activated the catalog prompt of {len(changed)} task(s): {', '.join(changed) or '-'}")


@prompts.command("list")
@click.argument("task_name")
def prompts_list(task_name: str) -> None:
    """Every version of a task's prompt, newest last, with the events that changed it."""
    instance, registry = _registry()
    with instance:
        versions = registry.versions(task_name)
        events = registry.events(task_name)
    if not versions:
        raise click.ClickException(f"no prompt versions recorded for {task_name!r} (run `agent-pipelines prompts sync`)")
    for v in versions:
        click.echo(
            f"#{v.seq:<3} {v.version:<20} {v.status:<9} {v.reason:<8} parent={v.parent_version or '-':<20} "
            f"by {v.author or '-'} at {v.created_at:%Y-%m-%d %H:%M}"
        )
        if v.motivation.get("rationale"):
            click.echo(f"      why: {v.motivation['rationale']}")
        if v.motivation.get("failing_runs"):
            click.echo(f"      from failing runs: {', '.join(v.motivation['failing_runs'])}")
    click.echo("events:")
    for e in events:
        click.echo(f"  {e.at:%Y-%m-%d %H:%M:%S} {e.action:<17} {e.version:<20} by {e.actor or '-'} {e.details}")


@prompts.command("show")
@click.argument("task_name")
@click.argument("version")
def prompts_show(task_name: str, version: str) -> None:
    """One version's prompt, system prompt and parameters."""
    instance, registry = _registry()
    with instance:
        found = registry.get(task_name, version)
    if found is None:
        raise click.ClickException(f"{task_name!r} has no version {version!r}")
    click.echo(found.prompt)
    if found.system:
        click.echo(f"--- system ---\n{found.system}")
    click.echo(f"--- parameters ---\n{found.parameters}")


@prompts.command("diff")
@click.argument("task_name")
@click.argument("old")
@click.argument("new")
def prompts_diff(task_name: str, old: str, new: str) -> None:
    """A unified diff of two versions (prompt, system prompt and parameters)."""
    import difflib

    instance, registry = _registry()
    with instance:
        a, b = registry.get(task_name, old), registry.get(task_name, new)
    if a is None or b is None:
        raise click.ClickException(f"{task_name!r} has no version {old if a is None else new!r}")

    def text(v):  # noqa: ANN001, ANN202
        return [*v.prompt.splitlines(), "--- system ---", *(v.system or "").splitlines(), "--- parameters ---", str(v.parameters)]

    for line in difflib.unified_diff(text(a), text(b), fromfile=old, tofile=new, lineterm=""):
        click.echo(line)


def _registry_action(action: str, task_name: str, version: str | None) -> None:
    from agent_pipelines.prompts.registry import RegistryError

    instance, registry = _registry()
    catalog = load_catalog(default_catalog_path())
    with instance, access_checked(registry.store, catalog, f"prompt.{action}", [task_name], version=version):
        try:
            if action == "rollback":
                result = registry.rollback(task_name)
            elif action in ("promote", "approve"):
                candidate = registry.get(task_name, version or "")
                must_pass = _must_pass_failures(registry, task_name, version or "")
                if candidate is not None and candidate.status == "candidate" and must_pass:
                    raise RegistryError(f"{version} failed must-pass checks {must_pass}: it cannot be promoted")
                result = registry.promote(task_name, version or "", reason="manual")
            else:
                result = registry.reject(task_name, version or "", reason="manual")
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"{task_name}: {result.version} is now {result.status}. The code location picks it up at its next reload.")


def _must_pass_failures(registry, task_name: str, version: str) -> list[str]:  # noqa: ANN001
    catalog = load_catalog(default_catalog_path())
    task = catalog.tasks.get(task_name)
    if task is None or task.checks is None:
        return []
    runs = registry.executions_by_version(task_name, limit=1000).get(version, [])
    return sorted({name for run in runs for name in run["failed"] if name in task.checks.must_pass})


@prompts.command("promote")
@click.argument("task_name")
@click.argument("version")
def prompts_promote(task_name: str, version: str) -> None:
    """Make a version active (also approves a candidate awaiting approval)."""
    _registry_action("promote", task_name, version)


@prompts.command("approve")
@click.argument("task_name")
@click.argument("version")
def prompts_approve(task_name: str, version: str) -> None:
    """Approve a candidate the tuner found better (tasks with `approval: manual`)."""
    _registry_action("approve", task_name, version)


@prompts.command("reject")
@click.argument("task_name")
@click.argument("version")
def prompts_reject(task_name: str, version: str) -> None:
    """Drop a candidate."""
    _registry_action("reject", task_name, version)


@prompts.command("rollback")
@click.argument("task_name")
def prompts_rollback(task_name: str) -> None:
    """Re-activate the version that was active before the current one."""
    _registry_action("rollback", task_name, None)


def _access_mode(production: bool) -> str:
    """Access is open without a policy (a laptop); --production refuses to start open."""
    from agent_pipelines.access.policy import POLICY_ENV, PolicyError, load_policy, policy_path

    path = policy_path()
    if path is None:
        if production:
            raise click.ClickException(
                f"--production serves the UI and the ingress to others: set {POLICY_ENV} to an access policy "
                "(example: deploy/policy.yaml; docs/access.md)"
            )
        return f"access is OPEN (no ${POLICY_ENV}: anyone reaching these ports may do anything; see docs/access.md)"
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    return f"access policy {path}: {len(policy.spec.grants)} grant(s), sign in with a token or through a trusted proxy"


def _port_free(host: str, port: int) -> bool:
    """Whether a part could listen there: a part whose port is taken would die at start and be
    restarted forever, its error only in its own log."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the Dagster UI.")
@click.option("--port", default=3000, show_default=True, type=int, help="Port of the Dagster UI.")
@click.option("--code-server-port", default=4266, show_default=True, type=int, help="Port of the code location's gRPC server.")
@click.option("--demo-agent-port", default=8765, show_default=True, type=int)
@click.option("--demo-agent/--no-demo-agent", default=True, show_default=True, help="Start the built-in demo agent.")
@click.option("--ingress-port", default=8788, show_default=True, type=int, help="Port of the event ingress.")
@click.option("--production", is_flag=True, help="PostgreSQL only, two daemons with failover (one active, one standing by).")
def up(host: str, port: int, code_server_port: int, demo_agent: bool, demo_agent_port: int, ingress_port: int, production: bool) -> None:
    """Run the platform: code server, Dagster UI and daemon, event ingress, demo agent.

    Each part runs in a process of its own and is restarted (with back-off) when it dies, while
    the others keep running. Ctrl-C stops everything within seconds. With --production the
    instance must be on PostgreSQL ($AGENT_PIPELINES_POSTGRES_URL) and the daemon runs under two
    `agent-pipelines daemon` wrappers: kill the active one and the other takes over.
    The Dagster UI is served behind the access gate (`agent-pipelines webserver`); without
    $AGENT_PIPELINES_POLICY access is open, and --production refuses to start without one.
    """
    from agent_pipelines.instance import POSTGRES_URL_ENV, ensure_instance, write_workspace
    from agent_pipelines.supervisor import Part, Supervisor, cancel_started_runs, settle_unfinished_runs

    if production and not os.environ.get(POSTGRES_URL_ENV):
        raise click.ClickException(
            f"--production runs two daemons with failover, which needs PostgreSQL: set {POSTGRES_URL_ENV}, "
            "e.g. postgresql://postgres@127.0.0.1:5432/test"
        )
    access = _access_mode(production)
    ports = {
        "--port (the Dagster UI)": (host, port),
        "--code-server-port": ("127.0.0.1", code_server_port),
        "--ingress-port": (host, ingress_port),
        **({"--demo-agent-port": ("127.0.0.1", demo_agent_port)} if demo_agent else {}),
    }
    taken = [f"{where[0]}:{where[1]} ({option})" for option, where in ports.items() if not _port_free(*where)]
    if taken:
        raise click.ClickException(
            f"port(s) in use: {', '.join(taken)}. Another `agent-pipelines up` may be running "
            "(stop it), or pass the option with a free port."
        )
    home = ensure_instance()
    env = dict(os.environ, DAGSTER_HOME=str(home))
    env.setdefault("DEMO_AGENT_TOKEN", "demo-local-token")
    env.setdefault("DEMO_INGRESS_TOKEN", "demo-ingress-token")
    env.setdefault(CATALOG_ENV_VAR, str(default_catalog_path()))
    project = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent

    catalog = load_catalog(env[CATALOG_ENV_VAR])
    click.echo(f"catalog {env[CATALOG_ENV_VAR]}: {len(catalog.tasks)} task(s), {len(catalog.problems)} problem(s)")
    for problem in catalog.problems:
        click.echo(f"  {problem}")
    click.echo(f"DAGSTER_HOME={home}")
    subprocess.run([str(bin_dir / "agent-pipelines"), "pools", "sync"], env=env, check=False, cwd=project)
    settled = settle_unfinished_runs(home, "the platform stopped before it finished them")
    if settled:
        click.echo(f"failed {settled} run(s) left unfinished by the last stop")
    workspace = write_workspace(home, host="127.0.0.1", port=code_server_port)

    logs = home / "platform-logs"  # (Dagster keeps its own `logs` folder for telemetry)
    logs.mkdir(exist_ok=True)

    def part(name: str, *argv: str) -> Part:
        return Part(name=name, argv=list(argv), env=env, cwd=project, log=logs / f"{name.replace(' ', '-')}.log")

    parts = [
        part("code server", str(bin_dir / "dagster"), "code-server", "start", "-m", "agent_pipelines.definitions",
             "-h", "127.0.0.1", "-p", str(code_server_port), "--log-level", "warning"),
        part("webserver", str(bin_dir / "agent-pipelines"), "webserver", "-w", str(workspace), "-h", host, "-p", str(port)),
        *(
            [part(f"daemon {name}", str(bin_dir / "agent-pipelines"), "daemon", "--name", name, "-w", str(workspace)) for name in ("a", "b")]
            if production
            else [part("daemon", str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace), "--log-level", "warning")]
        ),
        part("ingress", str(bin_dir / "agent-pipelines"), "ingress", "--host", host, "--port", str(ingress_port)),
    ]
    if demo_agent:
        parts.insert(0, part("demo agent", str(bin_dir / "agent-pipelines"), "demo-agent", "--port", str(demo_agent_port)))
    click.echo(f"Dagster UI: http://{host}:{port}  (Ctrl-C stops everything); {access}")
    click.echo(f"event ingress: http://{host}:{ingress_port}/events/<source>; logs of every part (runs too, in daemon.log): {logs}")
    supervisor = Supervisor(
        parts,
        say=lambda text: click.echo(f"agent-pipelines: {text}"),
        on_stopping=lambda: cancel_started_runs(home),
        on_stopped=lambda: settle_unfinished_runs(home),
    )
    sys.exit(supervisor.run())


# Command groups kept in modules of their own (agent_pipelines/commands/).
from agent_pipelines.commands.audit import audit_group  # noqa: E402

main.add_command(audit_group)
from agent_pipelines.commands.executions import executions_group  # noqa: E402

main.add_command(executions_group)
from agent_pipelines.commands.notifications import notifications_group  # noqa: E402

main.add_command(notifications_group)
from agent_pipelines.commands.webserver import webserver_command  # noqa: E402

main.add_command(webserver_command)
from agent_pipelines.commands.importing import export_group, import_group  # noqa: E402

main.add_command(import_group)
main.add_command(export_group)


main.help = f"""Agent task scheduling on Dagster.

\b
The catalog is read from ${CATALOG_ENV_VAR} (default: the example catalog).
Dagster's own commands (`dagster dev`, `dagster job execute`, `dagster-daemon run`) work as usual.
"""


if __name__ == "__main__":
    main()
