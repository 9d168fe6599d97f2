"""`agent-pipelines webserver`: the Dagster UI and GraphQL API behind the access gate.

Dagster's own webserver app (`DagsterWebserver(...).create_asgi_app()`) runs in this process,
wrapped by `agent_pipelines.access.gate.Gate`, served by uvicorn: one process, websockets
included, no reverse proxy to keep in step. The workspace options are Dagster's own (`-w`,
`-m`, `-f`, `--grpc-port`, ...), so this replaces `dagster-webserver` one for one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import click
from dagster_shared.cli import workspace_options

from agent_pipelines.access.policy import Policy, PolicyError

logger = logging.getLogger("agent_pipelines.webserver")

DB_STATEMENT_TIMEOUT_MS = 15_000  # dagster-webserver's defaults
DB_POOL_RECYCLE_S = 3600
DB_POOL_MAX_OVERFLOW = 20


def gated_process_context_class() -> type:
    """Dagster's workspace process context whose request contexts are read-only for callers
    who can change nothing (the UI then greys out its launch buttons for them)."""
    from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext

    class GatedProcessContext(WorkspaceProcessContext):
        read_only_for: Callable[[object | None], bool] = staticmethod(lambda source: False)  # type: ignore[assignment]

        def create_request_context(self, source: object | None = None) -> WorkspaceRequestContext:
            if self.read_only or not self.read_only_for(source):
                return super().create_request_context(source)
            return WorkspaceRequestContext(
                instance=self.instance,
                current_workspace=self.get_current_workspace(),
                process_context=self,
                version=self.version,
                source=source,
                read_only=True,
            )

    return GatedProcessContext


def build_gated_app(process_context: Any, store: Any, policy: Callable[[], Policy | None], catalog: Callable[[], Any]) -> Any:
    """Dagster's app inside the gate, with the platform's /ops pages mounted beside it."""
    from dagster_webserver.webserver import DagsterWebserver
    from starlette.routing import Router

    from agent_pipelines.access.gate import Gate, read_only_for
    from agent_pipelines.access.targets import WorkspaceTargets
    from agent_pipelines.web import ops_routes

    if hasattr(process_context, "read_only_for"):
        process_context.read_only_for = read_only_for(policy)
    dagster_app = DagsterWebserver(process_context).create_asgi_app()
    return Gate(
        dagster_app,
        policy=policy,
        store=store,
        targets=WorkspaceTargets(process_context, catalog),
        ops_app=Router(routes=ops_routes()),
    )


@click.command("webserver")
@click.option("-h", "--host", default="127.0.0.1", show_default=True)
@click.option("-p", "--port", default=3000, show_default=True, type=int)
@click.option("--read-only", is_flag=True, help="Dagster's read-only mode for everyone, whatever the policy grants.")
@click.option("--log-level", default="warning", show_default=True, type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--code-server-log-level", default="warning", show_default=True)
@workspace_options
def webserver_command(host: str, port: int, read_only: bool, log_level: str, code_server_log_level: str, **workspace: object) -> None:
    """Serve the Dagster UI and GraphQL API behind the access gate ($AGENT_PIPELINES_POLICY):
    sign-in by token or a trusted SSO proxy, every change checked per task and audited."""
    import uvicorn
    from dagster import DagsterInstance
    from dagster._cli.utils import assert_no_remaining_opts
    from dagster._cli.workspace.cli_target import WorkspaceOpts, workspace_opts_to_load_target
    from dagster_webserver.version import __version__

    from agent_pipelines.access.serving import policy_provider
    from agent_pipelines.catalog.loader import default_catalog_path
    from agent_pipelines.http_server import uvicorn_config
    from agent_pipelines.ingress import CatalogSources
    from agent_pipelines.store import StateStore, url_for_instance

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.environ.get("DAGSTER_HOME"):
        from agent_pipelines.instance import ensure_instance

        os.environ["DAGSTER_HOME"] = str(ensure_instance())
    opts = WorkspaceOpts.extract_from_cli_options(workspace)
    assert_no_remaining_opts(workspace)
    with DagsterInstance.get() as instance:
        instance.optimize_for_webserver(DB_STATEMENT_TIMEOUT_MS, DB_POOL_RECYCLE_S, DB_POOL_MAX_OVERFLOW)
        store = StateStore.for_url(url_for_instance(instance))
        try:
            policy = policy_provider(store, "webserver")
        except PolicyError as exc:
            raise click.ClickException(str(exc)) from None
        catalog = CatalogSources(default_catalog_path()).catalog
        context_class = gated_process_context_class()
        with context_class(
            instance,
            version=__version__,
            read_only=read_only,
            workspace_load_target=workspace_opts_to_load_target(opts),
            code_server_log_level=code_server_log_level,
        ) as process_context:
            app = build_gated_app(process_context, store, policy, catalog)
            click.echo(f"Dagster UI behind the access gate on http://{host}:{port} (pid {os.getpid()})")
            # proxy_headers off: only the TCP peer decides whether identity headers are trusted.
            config = uvicorn_config(app, host=host, port=port, log_level=log_level, proxy_headers=False, ws="auto", lifespan="off")
            uvicorn.Server(config).run()
