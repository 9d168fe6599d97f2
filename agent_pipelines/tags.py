"""Run and materialization tags: how runs are found and filtered in the Dagster UI.

Run tags belong to a whole run; when one run serves several tasks the same facts go on each
materialization instead. Materialization tags must obey Dagster's strict tag rules (letters,
digits, `_-.`, at most 63 characters), so values are sanitised there.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

PREFIX = "agent_pipelines"
TASK = f"{PREFIX}/task"
AGENT = f"{PREFIX}/agent"
OWNER = f"{PREFIX}/owner"
PROMPT_VERSION = f"{PREFIX}/prompt_version"
TRIGGER = f"{PREFIX}/trigger"
WORKFLOW = f"{PREFIX}/workflow"
DUE_TIME = f"{PREFIX}/due_time"
OUTCOME = f"{PREFIX}/outcome"
EVENT_ID = f"{PREFIX}/event_id"
WINDOW_START = f"{PREFIX}/window_start"
WINDOW_END = f"{PREFIX}/window_end"
CATCHUP = f"{PREFIX}/catchup"
RESCUE = f"{PREFIX}/rescue"
RUN_NOW_ID = f"{PREFIX}/run_now_id"
LATENESS_MS = f"{PREFIX}/lateness_ms"
EXECUTIONS = f"{PREFIX}/executions"
#: The one execution (idempotency key) a batch run carries: its due time, event or upstream.
EXECUTION = f"{PREFIX}/execution"
#: A batch run's progress, updated while it runs.
PROGRESS = f"{PREFIX}/progress"
TASKS = f"{PREFIX}/tasks"
AGENTS = f"{PREFIX}/agents"

SCHEDULED_EXECUTION_TIME = ".dagster/scheduled_execution_time"
#: The queued run coordinator starts higher priorities first.
PRIORITY = "dagster/priority"
#: Dagster's run monitoring fails a run still going after this many seconds.
MAX_RUNTIME = "dagster/max_runtime"
ROOT_RUN_ID = "dagster/root_run_id"

_STRICT_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def owner_label(owner: str) -> str:
    """`team:research` -> `research`; emails stay recognisable."""
    return owner.removeprefix("team:")


def strict_value(value: str) -> str:
    """A value Dagster accepts on a materialization tag."""
    return _STRICT_UNSAFE.sub("_", value)[:63]


def strict_due(value: dt.datetime) -> str:
    """A due time in a strict tag value: `20261123T090000.000Z`."""
    return value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.") + f"{value.microsecond // 1000:03d}Z"


def strict_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {key: strict_value(value) for key, value in tags.items()}


def summary(names: list[str], limit: int = 240) -> str:
    """Names for a run tag, shortened to `a, b, c (+12 more)` when long."""
    text = ", ".join(names)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    for name in names:
        if len(", ".join([*shown, name])) > limit - 16:
            break
        shown.append(name)
    return f"{', '.join(shown)} (+{len(names) - len(shown)} more)"
