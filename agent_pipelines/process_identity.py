"""Which process is this, in a form another process on the same machine can check later.

`host:pid:start` (start: the process's start time in clock ticks after boot, from /proc), so a
pid reused by a later process does not pass for the old one. Used for run workers (a run whose
worker is gone is dead at once) and for agents started by the lifecycle's command backend.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def identity_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or ''}"


def this_process() -> str:
    return identity_of(os.getpid())


def pid_of(identity: str) -> int:
    return int(identity.rsplit(":", 2)[1])


def is_gone(identity: str | None) -> bool:
    """True only when `identity` names a process of this machine that has ended (or is a zombie);
    False when it cannot tell (another machine, no /proc)."""
    if not identity or not Path("/proc/self/stat").exists():
        return False
    try:
        host, pid, start = identity.rsplit(":", 2)
        number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname() or not start:
        return False
    return _process_start(number) != start


def _process_start(pid: int) -> str | None:
    """The process's start time from /proc (None when it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else start
