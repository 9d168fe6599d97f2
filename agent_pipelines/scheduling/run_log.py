"""A run's log that never raises.

`context.log` writes each line into the run's event log in Dagster's storage. While that
database is down the call itself can raise: Dagster's handler re-raises when it cannot even
record that a line was lost. A run's threads log exactly then ("could not record ...;
retrying"), and a log line must not kill the thread that keeps the answers: in a PostgreSQL
restart the recorder died that way, and its executions stayed claimed while the run lived on
(nothing rescues the window of a live run). A line the run's log cannot take goes to the
process's stderr instead, which is the run's compute log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

FALLBACK = logging.getLogger("agent_pipelines.run")


class NeverRaisingLog:
    """Wraps a run's log (`context.log` or a `logging.Logger`); the same methods, never raising."""

    def __init__(self, log: logging.Logger | Any, fallback: logging.Logger = FALLBACK) -> None:
        self._log = log
        self._fallback = fallback

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.DEBUG, "debug", msg, args, kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.INFO, "info", msg, args, kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.WARNING, "warning", msg, args, kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.ERROR, "error", msg, args, kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.CRITICAL, "critical", msg, args, kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", sys.exc_info())  # the caller's exception, not the log's own
        self._emit(logging.ERROR, "error", msg, args, kwargs)

    def _emit(self, level: int, method: str, msg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            getattr(self._log, method)(msg, *args, **kwargs)
        except Exception as failure:  # noqa: BLE001 - the run's log is down: say it where it can be read
            try:
                text = str(msg) % args if args else str(msg)
                self._fallback.log(level, "%s [not in the run's log: %r]", text, failure, exc_info=kwargs.get("exc_info"))
            except Exception:  # noqa: BLE001 - nothing is left to tell
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def never_raising(log: logging.Logger | Any) -> NeverRaisingLog:
    return log if isinstance(log, NeverRaisingLog) else NeverRaisingLog(log)
