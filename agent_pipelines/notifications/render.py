"""The words of a message: a title that says what happened to what, a body with the facts to act on."""

from __future__ import annotations

from agent_pipelines.catalog.durations import format_duration
from agent_pipelines.notifications.events import Event

#: `late` events of executions that never left: missed, or skipped while their agent was saturated.
NEVER_SENT = ("missed", "skipped")
PREFIX = "[agent-pipelines]"


def notify_type(kind: str) -> str:
    """apprise's message type (`info`, `success`, `warning`, `failure`): colours and icons."""
    if kind == "recovery":
        return "success"
    if kind in ("failure", "agent_unhealthy"):
        return "failure"
    return "warning"


def _seconds(value: object) -> str:
    return format_duration(round(float(value), 3)) if isinstance(value, (int, float)) else "?"


def title(event: Event) -> str:
    name = event.subject_name
    f = event.facts
    if event.subject.startswith("agent:"):
        what = f"agent {name} is unhealthy" if event.kind == "agent_unhealthy" else f"agent {name} is healthy again"
    elif event.kind == "failure":
        what = f"task {name} failed ({f.get('status')})"
    elif event.kind == "recovery":
        what = f"task {name} recovered"
    elif event.kind == "late":
        what = f"task {name} missed its due time" if f.get("status") in NEVER_SENT else f"task {name} ran late"
    elif event.kind == "check_failed":
        what = f"task {name} failed check {f.get('check')}"
    else:
        what = f"{'task' if event.task else 'budget'} {name} is over its daily budget"
    return f"{PREFIX} {what}"


def body(event: Event) -> str:
    f = event.facts
    lines: list[str] = []
    if event.kind == "failure":
        lines.append(
            f"Task {event.task} (owner {event.owner}) ended {f.get('status')} after {f.get('attempts')} attempt(s)"
            + (f", failure #{f['failures']} in a row." if f.get("failures", 1) > 1 else ".")
        )
        if f.get("status") == "unknown":
            lines.append("Unknown: the request may have reached the agent; it is not sent again.")
        lines += _line("Error", f.get("error")) + _line("Failure kind", f.get("failure_kind")) + _line("Reason", f.get("reason"))
    elif event.kind == "recovery" and event.subject.startswith("agent:"):
        lines.append(f"Agent {event.agent} answered a probe; it was unhealthy since {f.get('unhealthy_since')}. Its tasks run again.")
    elif event.kind == "recovery":
        lines.append(
            f"Task {event.task} (owner {event.owner}) succeeded again after {f.get('failures')} failed execution(s) "
            f"since {f.get('failing_since')}."
        )
    elif event.kind == "late":
        if f.get("status") in NEVER_SENT:
            lines.append(f"Task {event.task} (owner {event.owner}) never ran for its due time {f.get('due_time')}.")
            lines += _line("Reason", f.get("reason"))
        else:
            lines.append(
                f"Task {event.task} (owner {event.owner}) was sent {_seconds(f.get('lateness_s'))} after its due time "
                f"{f.get('due_time')}, over its threshold of {_seconds(f.get('late_after_s'))}."
            )
    elif event.kind == "check_failed":
        score = f" (score {f['score']:g})" if isinstance(f.get("score"), (int, float)) else ""
        lines.append(f"Task {event.task} (owner {event.owner}) failed its check `{f.get('check')}`{score}.")
        lines += _line("Details", f.get("details")) + _line("Prompt version", f.get("prompt_version"))
    elif event.kind == "agent_unhealthy":
        lines.append(
            f"Agent {event.agent} is marked unhealthy after {f.get('consecutive_failures')} consecutive failures; "
            "its tasks are skipped until a probe succeeds."
        )
        lines += _line("Last error", f.get("last_error")) + _line("Next probe", f.get("next_probe_at"))
        lines += _line("Tasks", ", ".join(f.get("tasks") or []) or None)
    elif event.kind == "budget_exceeded":
        lines.append(str(f.get("description")) + ".")
        lines.append("Its tasks are paused until the next UTC day." if f.get("paused") else "Its tasks keep running (warning only).")
        lines += _line("Tasks", ", ".join(f.get("tasks") or []) or None)
    lines += _line("Execution", f.get("execution")) + _line("Run", f.get("run_id"))
    lines.append(f"At: {event.at.isoformat()}")
    return "\n".join(lines)


def _line(label: str, value: object) -> list[str]:
    return [f"{label}: {value}"] if value not in (None, "") else []


def repeats_note(suppressed: int, carried: int, window_s: float) -> str:
    """What the rate window held back, appended when the message is delivered."""
    notes = []
    if carried:
        notes.append(f"{carried} more event(s) like this since the previous message were not sent separately.")
    if suppressed:
        notes.append(
            f"{suppressed} more event(s) for this subject within {format_duration(window_s)} were folded into this message."
        )
    return "\n".join(notes)
