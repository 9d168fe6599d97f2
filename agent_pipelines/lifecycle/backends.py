"""How an agent is woken and put to sleep: an HTTP hook, a Kubernetes scale, a local command.

Each call is short and synchronous (the controller runs them side by side in threads): the HTTP
hook and the scale call return once the request was accepted; the command backend starts the
agent's process in a session of its own and returns. Readiness is checked separately (`ready`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from agent_pipelines.catalog.lifecycle import CommandLifecycleSpec, HttpLifecycleSpec, KubernetesLifecycleSpec, LifecycleSpec
from agent_pipelines.process_identity import identity_of, is_gone, pid_of


class LifecycleError(RuntimeError):
    """A wake or sleep call that did not work; the message says what to fix."""


@dataclass(frozen=True)
class Woken:
    process: str | None = None  # the command backend's process, `host:pid:start`


class Backend(Protocol):
    def wake(self, agent: str) -> Woken: ...
    def sleep(self, agent: str, process: str | None) -> None: ...
    def alive(self, process: str | None) -> bool: ...


class HttpBackend:
    def __init__(self, spec: HttpLifecycleSpec, transport: httpx.BaseTransport | None = None) -> None:
        self.spec = spec
        self.transport = transport

    def wake(self, agent: str) -> Woken:
        self._call(agent, "wake")
        return Woken()

    def sleep(self, agent: str, process: str | None) -> None:
        self._call(agent, "sleep")

    def alive(self, process: str | None) -> bool:
        return True

    def _call(self, agent: str, which: str) -> None:
        call = getattr(self.spec, which)
        headers = dict(call.headers)
        if self.spec.auth_env:
            token = os.environ.get(self.spec.auth_env)
            if not token:
                raise LifecycleError(f"agent {agent!r}: lifecycle.http.auth_env names ${self.spec.auth_env}, which is not set")
            headers["Authorization"] = f"Bearer {token}"
        try:
            with httpx.Client(timeout=self.spec.timeout, transport=self.transport) as client:
                response = client.request(call.method, call.url, json=call.body, headers=headers)
        except httpx.HTTPError as exc:
            raise LifecycleError(f"agent {agent!r}: {which} hook {call.method} {call.url} failed: {exc!r}") from exc
        if response.status_code >= 300:
            raise LifecycleError(f"agent {agent!r}: {which} hook {call.method} {call.url} answered {response.status_code}: {response.text[:200]}")


class KubernetesBackend:
    """Scales the workload through the `kubernetes` client's scale subresource."""

    def __init__(self, spec: KubernetesLifecycleSpec, apps_api: Any = None) -> None:
        self.spec = spec
        self._apps_api = apps_api

    def wake(self, agent: str) -> Woken:
        self._scale(agent, self.spec.replicas)
        return Woken()

    def sleep(self, agent: str, process: str | None) -> None:
        self._scale(agent, 0)

    def alive(self, process: str | None) -> bool:
        return True

    def scale_body(self, replicas: int) -> dict[str, Any]:
        return {"spec": {"replicas": replicas}}

    def _api(self) -> Any:
        if self._apps_api is None:
            import kubernetes

            try:
                if self.spec.kubeconfig:
                    kubernetes.config.load_kube_config(config_file=self.spec.kubeconfig)
                else:
                    try:
                        kubernetes.config.load_incluster_config()
                    except kubernetes.config.ConfigException:
                        kubernetes.config.load_kube_config()
            except Exception as exc:  # noqa: BLE001 - no configuration at all
                raise LifecycleError(f"no Kubernetes configuration to scale {self.spec.kind} {self.spec.name}: {exc}") from exc
            self._apps_api = kubernetes.client.AppsV1Api()
        return self._apps_api

    def _scale(self, agent: str, replicas: int) -> None:
        api = self._api()
        method = api.patch_namespaced_deployment_scale if self.spec.kind == "Deployment" else api.patch_namespaced_stateful_set_scale
        try:
            method(name=self.spec.name, namespace=self.spec.namespace, body=self.scale_body(replicas))
        except Exception as exc:  # noqa: BLE001 - ApiException and transport errors alike
            raise LifecycleError(
                f"agent {agent!r}: scaling {self.spec.kind} {self.spec.namespace}/{self.spec.name} to {replicas} failed: {exc}"
            ) from exc


class CommandBackend:
    """Starts the agent as a process of its own (its own session, so it outlives the caller) and
    stops it with `stop`, or by signalling its process group."""

    def __init__(self, spec: CommandLifecycleSpec, stop_grace_s: float = 10.0) -> None:
        self.spec = spec
        self.stop_grace_s = stop_grace_s

    def wake(self, agent: str) -> Woken:
        log = Path(self.spec.log).open("ab") if self.spec.log else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                _argv(self.spec.start),
                cwd=self.spec.cwd,
                env={**os.environ, **self.spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise LifecycleError(f"agent {agent!r}: cannot start {self.spec.start}: {exc}") from exc
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        return Woken(process=identity_of(process.pid))

    def sleep(self, agent: str, process: str | None) -> None:
        if self.spec.stop:
            result = subprocess.run(_argv(self.spec.stop), cwd=self.spec.cwd, env={**os.environ, **self.spec.env}, capture_output=True, timeout=60, check=False)
            if result.returncode != 0:
                raise LifecycleError(f"agent {agent!r}: {self.spec.stop} exited with {result.returncode}: {result.stderr.decode()[-300:]}")
            return
        if process is None or is_gone(process):
            return
        pid = pid_of(process)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline and not is_gone(process):
            time.sleep(0.1)
        if not is_gone(process):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def alive(self, process: str | None) -> bool:
        return process is None or not is_gone(process)


def _argv(command: list[str]) -> list[str]:
    """One string is a shell command line; several are an argv."""
    return ["/bin/sh", "-c", command[0]] if len(command) == 1 and " " in command[0] else [*command]


def backend_for(spec: LifecycleSpec) -> Backend:
    if spec.http is not None:
        return HttpBackend(spec.http)
    if spec.kubernetes is not None:
        return KubernetesBackend(spec.kubernetes)
    assert spec.command is not None
    return CommandBackend(spec.command)


__all__ = ["Backend", "CommandBackend", "HttpBackend", "KubernetesBackend", "LifecycleError", "Woken", "backend_for"]
