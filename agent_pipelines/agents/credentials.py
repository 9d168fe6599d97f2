"""Where an agent's bearer token comes from, read when each request is built.

A token lives in an environment variable (`auth_env`) or in a file (`auth_file`, e.g. a
Kubernetes secret mounted as a volume, which the kubelet rewrites on rotation). It is read for
every request, not once per process, so a rotated file takes effect without a restart; the file
is re-read only when its modification time or size changes. Errors name the variable or file to
fix and never contain the token.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent_pipelines.agents.base import AgentCallError, FailureKind


@dataclass
class TokenSource:
    """`env` or `file` (exactly one is used; `file` wins when both are set)."""

    agent: str
    env: str | None = None
    file: str | None = None
    _cached: tuple[tuple[int, int], str] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> str:
        """Where the token is read from, for error messages."""
        if self.file:
            return f"the file {self.file} (auth_file)"
        return f"the environment variable {self.env} (auth_env)"

    def token(self) -> str:
        if self.file:
            return self._from_file(Path(self.file))
        assert self.env is not None
        value = os.environ.get(self.env, "").strip()
        if not value:
            raise AgentCallError(
                FailureKind.CONFIG,
                f"agent {self.agent!r} reads its token from the environment variable {self.env}, "
                "which is not set where this run executes",
            )
        return value

    def _from_file(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as exc:
            raise AgentCallError(
                FailureKind.CONFIG,
                f"agent {self.agent!r} reads its token from the file {path} (auth_file), which cannot "
                f"be read: {exc.strerror or type(exc).__name__}",
            ) from exc
        signature = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cached is not None and self._cached[0] == signature:
                return self._cached[1]
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise AgentCallError(
                    FailureKind.CONFIG,
                    f"agent {self.agent!r} reads its token from the file {path} (auth_file), which "
                    f"cannot be read: {type(exc).__name__}",
                ) from exc
            if not value:
                raise AgentCallError(FailureKind.CONFIG, f"agent {self.agent!r}: the token file {path} (auth_file) is empty")
            self._cached = (signature, value)
            return value
