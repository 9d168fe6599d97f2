"""Write imported tasks into catalog YAML without touching anything the importer did not write.

An imported task carries tags `imported_from`, `source_gateway`, `source_job_id` and
`import_digest` (a digest of the task as written). Re-importing finds it by the first three,
anywhere in the catalog, and replaces exactly its lines (and the `# imported:` comment lines
right above it) when its digest still matches: a task edited by hand since is left alone, a job
already imported is never added twice, and every other line of every file (hand-written tasks,
comments, blank lines) stays byte for byte. New tasks are appended to the end of the `tasks:`
list of the gateway's output file, new agents to its `agents:` list.

Nothing is written unless the whole catalog, with the edits, loads without any problem that was
not there before (`load_catalog` on a copy); each file is then replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from agent_pipelines.catalog.loader import CatalogProblem, catalog_files, load_catalog
from agent_pipelines.catalog.yaml_lines import YamlLoadError, load_yaml_with_lines
from agent_pipelines.importers.gateways import DEFAULT_BASE_URLS
from agent_pipelines.importers.mapping import (
    TAG_DIGEST,
    TAG_FROM,
    TAG_GATEWAY,
    TAG_JOB,
    AgentEntry,
    JobResult,
    task_name,
)

MARKER = "# imported: "
Key = tuple[str, str, str]


class CatalogWriteError(Exception):
    """The edits cannot be made (or would break the catalog); nothing was written."""


# -------------------------------------------------------------------------------------------
# Rendering
# -------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Flow(dict):
    """A small mapping of scalars, written on one line: `schedule: {cron: ..., timezone: ...}`."""


def _represent_flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.MappingNode:
    node = dumper.represent_mapping("tag:yaml.org,2002:map", dict(value), flow_style=True)
    for _key, child in node.value:
        if isinstance(child, yaml.SequenceNode):
            child.flow_style = True
    return node


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Flow, _represent_flow)


def _small(value: Any) -> bool:
    return not isinstance(value, (dict, list)) or (isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value))


def _styled(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _Flow(value) if isinstance(value, dict) and all(_small(v) for v in value.values()) else value
        for key, value in item.items()
    }


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def content_digest(item: Mapping[str, Any]) -> str:
    """What the importer wrote, as YAML reads it back, without the digest tag itself."""
    data = _plain(dict(item))
    tags = dict(data.get("tags") or {})
    tags.pop(TAG_DIGEST, None)
    data["tags"] = tags
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def render_item(item: Mapping[str, Any], comments: Iterable[str] = (), dash_column: int = 2) -> str:
    """One list item of `tasks:` / `agents:` as block YAML, `- ` at `dash_column`."""
    text = yaml.dump({"x": [_styled(item)]}, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=10**9)
    body = text.split("\n", 1)[1]  # drop "x:"; items start with "  - "
    shift = dash_column - 2
    lines = [(" " * shift + line if shift >= 0 else line[-shift:]) if line else line for line in body.splitlines()]
    pad = " " * dash_column
    head = [f"{pad}{MARKER}{c}" for c in comments]
    return "\n".join(head + lines) + "\n"


def _parse_item(block: str) -> dict[str, Any]:
    parsed = yaml.safe_load("x:\n" + "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#")))
    return parsed["x"][0]


def task_item(result: JobResult, name: str, enabled: bool) -> dict[str, Any]:
    """The task as written, its digest included."""
    assert result.task is not None
    task = {"name": name, **result.task, "enabled": enabled}
    task["tags"] = {TAG_FROM: result.kind, TAG_GATEWAY: result.gateway, TAG_JOB: result.job_id}
    digest = content_digest(_parse_item(render_item(task)))
    task["tags"] = {**task["tags"], TAG_DIGEST: digest}
    return task


def comments_for(result: JobResult) -> list[str]:
    return [f"{result.kind} gateway {result.gateway}, job {result.job_id} ({result.job_name})", *result.comments]


# -------------------------------------------------------------------------------------------
# Reading the catalog as text and as data
# -------------------------------------------------------------------------------------------


@dataclass
class FoundTask:
    file: Path
    name: str
    raw: dict[str, Any]

    @property
    def key(self) -> Key | None:
        tags = self.raw.get("tags") or {}
        if not isinstance(tags, dict):
            return None
        parts = (tags.get(TAG_FROM), tags.get(TAG_GATEWAY), tags.get(TAG_JOB))
        return tuple(str(p) for p in parts) if all(parts) else None  # type: ignore[return-value]

    @property
    def untouched(self) -> bool:
        tags = self.raw.get("tags") or {}
        return isinstance(tags, dict) and tags.get(TAG_DIGEST) == content_digest(self.raw)


@dataclass
class CatalogState:
    root: Path
    tasks: dict[str, FoundTask]
    agents: dict[str, tuple[Path, dict[str, Any]]]
    imported: dict[Key, FoundTask]
    channels: set[str]

    @classmethod
    def scan(cls, root: Path) -> CatalogState:
        tasks: dict[str, FoundTask] = {}
        agents: dict[str, tuple[Path, dict[str, Any]]] = {}
        channels: set[str] = set()
        for path in catalog_files(root) if root.exists() else []:
            try:
                document = load_yaml_with_lines(path)
            except YamlLoadError:
                continue  # reported by validation; an unreadable file is never edited
            if not isinstance(document, dict):
                continue
            for entry in document.get("tasks") or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    tasks.setdefault(entry["name"], FoundTask(path, entry["name"], entry))
            for entry in document.get("agents") or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    agents.setdefault(entry["name"], (path, entry))
            for entry in document.get("fleets") or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    agents.setdefault(entry["name"], (path, {**entry, "fleet": True}))
            notifications = document.get("notifications")
            if isinstance(notifications, dict):
                for channel in notifications.get("channels") or []:
                    if isinstance(channel, dict) and isinstance(channel.get("name"), str):
                        channels.add(channel["name"])
        imported = {found.key: found for found in tasks.values() if found.key is not None}
        return cls(root, tasks, agents, imported, channels)  # type: ignore[arg-type]


@dataclass
class _Sequence:
    key_line: int | None  # line of `tasks:` (None: the key is missing)
    items: list[tuple[int, int, int]]  # (first line, end line exclusive, dash column) per item
    names: list[str | None]
    inline_empty: bool = False  # `tasks: []` / `tasks:` with no value


def _content_end(node: yaml.Node) -> int:
    """The line after the last line that holds any of `node`'s content."""
    end = node.end_mark.line + (1 if node.end_mark.column > 0 else 0)
    if isinstance(node, yaml.MappingNode) and not node.flow_style:
        return max([node.start_mark.line + 1] + [_content_end(part) for pair in node.value for part in pair])
    if isinstance(node, yaml.SequenceNode) and not node.flow_style:
        return max([node.start_mark.line + 1] + [_content_end(child) for child in node.value])
    return end


def _layout(text: str, key: str) -> _Sequence:
    lines = text.splitlines()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise CatalogWriteError(f"invalid YAML: {exc}") from None
    if root is None:
        return _Sequence(None, [], [])
    if not isinstance(root, yaml.MappingNode):
        raise CatalogWriteError("the top level is not a mapping")
    for key_node, value in root.value:
        if key_node.value != key:
            continue
        if isinstance(value, yaml.ScalarNode) and value.value in ("", "~", "null"):
            return _Sequence(key_node.start_mark.line, [], [], inline_empty=True)
        if not isinstance(value, yaml.SequenceNode):
            raise CatalogWriteError(f"`{key}` is not a list")
        if value.flow_style:
            if value.value:
                raise CatalogWriteError(f"`{key}` is a flow-style list ([...]); write it as a block list to import into it")
            if value.start_mark.line != key_node.start_mark.line:
                raise CatalogWriteError(f"`{key}: []` spans lines; write it on one line or as a block list")
            return _Sequence(key_node.start_mark.line, [], [], inline_empty=True)
        items, names = [], []
        for child in value.value:
            first = child.start_mark.line
            if not lines[first].lstrip().startswith("-") and first > 0 and lines[first - 1].strip() == "-":
                first -= 1
            dash = lines[first].index("-") if "-" in lines[first] else max(0, child.start_mark.column - 2)
            items.append((first, _content_end(child), dash))
            name = None
            if isinstance(child, yaml.MappingNode):
                for k, v in child.value:
                    if k.value == "name" and isinstance(v, yaml.ScalarNode):
                        name = v.value
            names.append(name)
        return _Sequence(key_node.start_mark.line, items, names)
    return _Sequence(None, [], [])


# -------------------------------------------------------------------------------------------
# Planning and applying the edits
# -------------------------------------------------------------------------------------------


@dataclass
class FileEdit:
    path: Path
    replace: dict[str, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)  # task name -> (item, comments)
    append_tasks: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    append_agents: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.replace or self.append_tasks or self.append_agents)


def _insert_items(lines: list[str], text: str, key: str, items: list[tuple[dict[str, Any], list[str]]]) -> list[str]:
    if not items:
        return lines
    layout = _layout(text, key)
    if layout.items:
        dash = layout.items[-1][2]
        at = layout.items[-1][1]
        blocks = "".join(render_item(item, comments, dash) for item, comments in items).splitlines()
        return lines[:at] + blocks + lines[at:]
    blocks = "".join(render_item(item, comments) for item, comments in items).splitlines()
    if layout.key_line is None:
        tail = [""] if lines and lines[-1].strip() else []
        return lines + tail + [f"{key}:"] + blocks
    # `tasks:` with no items (or `tasks: []`): the items go right under the key.
    at = layout.key_line
    return lines[:at] + [f"{key}:"] + blocks + lines[at + 1:]


def apply_edit(text: str, edit: FileEdit) -> str:
    """The file's new text: managed items replaced in place, new items appended."""
    lines = text.splitlines()
    if edit.replace:
        layout = _layout(text, "tasks")
        spans = []
        for (first, end, dash), name in zip(layout.items, layout.names, strict=True):
            if name in edit.replace:
                start = first
                while start > 0 and lines[start - 1].lstrip().startswith(MARKER.strip()):
                    start -= 1
                item, comments = edit.replace[name]
                spans.append((start, end, render_item(item, comments, dash).splitlines()))
        missing = set(edit.replace) - {n for n in layout.names if n}
        if missing:
            raise CatalogWriteError(f"{edit.path}: task(s) {sorted(missing)} not found as block list items")
        for start, end, block in sorted(spans, reverse=True):
            lines[start:end] = block
    text = "\n".join(lines) + ("\n" if lines else "")
    # Agents first: adding them may add a top-level key, which the task layout then sees.
    lines = _insert_items(lines, text, "agents", edit.append_agents)
    text = "\n".join(lines) + "\n"
    lines = _insert_items(lines, text, "tasks", edit.append_tasks)
    return "\n".join(lines) + "\n"


def new_file_text(edit: FileEdit, header: str) -> str:
    parts = [header.rstrip() + "\n"]
    if edit.append_agents:
        parts.append("\nagents:\n" + "".join(render_item(item, comments) for item, comments in edit.append_agents))
    parts.append("\ntasks:\n" + "".join(render_item(item, comments) for item, comments in edit.append_tasks))
    return "".join(parts)


def _check_roundtrip(old_text: str | None, new_text: str, edit: FileEdit) -> None:
    """Hand-written items must read back exactly as before, ours exactly as intended."""
    try:
        new = yaml.safe_load(new_text) or {}
    except yaml.YAMLError as exc:
        raise CatalogWriteError(f"{edit.path}: the edited file would not parse ({exc}); nothing written") from None
    old = (yaml.safe_load(old_text) or {}) if old_text else {}
    for key, appended in (("tasks", edit.append_tasks), ("agents", edit.append_agents)):
        before = list(old.get(key) or []) if isinstance(old, dict) else []
        after = list(new.get(key) or [])
        expected = []
        for item in before:
            name = item.get("name") if isinstance(item, dict) else None
            expected.append(edit.replace[name][0] if key == "tasks" and name in edit.replace else item)
        expected += [item for item, _ in appended]
        if _plain(after) != _plain(expected):
            raise CatalogWriteError(f"{edit.path}: editing `{key}` would change more than the imported items; nothing written")
    if isinstance(old, dict):
        for key in old:
            if key not in ("tasks", "agents") and _plain(old[key]) != _plain(new.get(key)):
                raise CatalogWriteError(f"{edit.path}: editing would change `{key}`; nothing written")


def _problem_key(problem: CatalogProblem, root: Path, shown_root: Path | None = None) -> tuple[str, ...]:
    path = Path(problem.file)
    try:
        rel = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        rel = problem.file
    message = problem.message
    if shown_root is not None:  # paths inside messages point into the copy: compare them as the real ones
        message = message.replace(str(root.resolve()), str(shown_root.resolve())).replace(str(root), str(shown_root))
    return (rel, problem.kind, problem.name or "", problem.field or "", message)


def validate_texts(root: Path, texts: Mapping[Path, str]) -> tuple[list[CatalogProblem], list[CatalogProblem]]:
    """(problems the edits would add, problems the catalog already has), by loading a copy."""
    before = load_catalog(root) if root.exists() else None
    with tempfile.TemporaryDirectory(prefix="agent-pipelines-import-") as tmp:
        copy = Path(tmp) / "catalog"
        if root.exists():
            shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".*"))
        else:
            copy.mkdir()
        for path, text in texts.items():
            target = copy / path.resolve().relative_to(root.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        after = load_catalog(copy)
        old = {_problem_key(p, root) for p in before.problems} if before else set()
        added = []
        for problem in after.problems:
            key = _problem_key(problem, copy, root)
            if key in old:
                continue
            shown = problem.file
            try:
                shown = str(root / Path(problem.file).resolve().relative_to(copy.resolve()))
            except ValueError:
                pass
            added.append(CatalogProblem(shown, problem.line, problem.kind, problem.name, problem.field, key[-1]))
    return added, list(before.problems) if before else []


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def lock_for(root: Path) -> FileLock:
    """One import or export at a time per catalog directory."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".agent-pipelines-import.lock"), timeout=300)


# -------------------------------------------------------------------------------------------
# The whole import into one catalog
# -------------------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    texts: dict[Path, str]  # the new content of every file that changes
    old_texts: dict[Path, str | None]
    results: list[JobResult]
    agent_conflicts: dict[str, str]  # gateway -> why its jobs were not imported
    new_agents: list[str]

    @property
    def changed(self) -> list[Path]:
        return [p for p, text in self.texts.items() if self.old_texts.get(p) != text]


def plan_import(root: Path, results: list[JobResult], agents: list[AgentEntry], output_for: Mapping[str, Path],
                header: str) -> ImportPlan:
    """Decide every task's name and the new text of every file; write nothing."""
    state = CatalogState.scan(root)
    edits: dict[Path, FileEdit] = {}

    def edit_of(path: Path) -> FileEdit:
        return edits.setdefault(path, FileEdit(path))

    conflicts: dict[str, str] = {}
    new_agents: list[str] = []
    gateway_of_agent = {r.agent: r.gateway for r in results if r.agent}
    for agent in agents:
        existing = state.agents.get(agent.name)
        gateway = gateway_of_agent.get(agent.name, agent.name)
        if existing is None:
            edit_of(output_for[gateway]).append_agents.append((agent.as_yaml(), []))
            new_agents.append(agent.name)
            continue
        path, raw = existing
        if raw.get("fleet"):
            conflicts[gateway] = f"{agent.name!r} is a fleet of the catalog ({path}): rename the gateway"
            continue
        have = {"kind": raw.get("kind"), "base_url": raw.get("base_url") or DEFAULT_BASE_URLS.get(str(raw.get("kind"))),
                "agent_id": raw.get("agent_id") or ("main" if raw.get("kind") == "openclaw" else None)}
        wanted = {"kind": agent.kind, "base_url": agent.base_url, "agent_id": agent.agent_id}
        differs = [key for key in wanted if str(have[key] or "").rstrip("/") != str(wanted[key] or "").rstrip("/")]
        if differs:
            conflicts[gateway] = (f"the catalog already has agent {agent.name!r} ({path}) with another "
                                  f"{', '.join(differs)}: rename the gateway or the agent")
    taken = set(state.tasks)
    ordered = sorted((r for r in results if r.status == "imported"), key=lambda r: (r.gateway, r.job_name, r.job_id))
    present = {r.key for r in results}
    for result in ordered:
        if result.gateway in conflicts:
            result.not_mapped(conflicts[result.gateway])
            continue
        found = state.imported.get(result.key) or _lost_job_task(state, result, present)
        if found is not None:
            result.task_name, result.file = found.name, str(found.file)
            if not found.untouched:
                result.action = "kept"
                result.notes.append("edited by hand since it was imported: left as it is (delete it to import it again)")
                continue
            if not result.source_enabled:
                _keep_runtime_fields(result, found.raw)
            enabled = True if result.source_enabled else bool(found.raw.get("enabled", True))
            result.task["enabled"] = enabled
            item = task_item(result, found.name, enabled)
            if _plain(item) == _plain(found.raw) and comments_for(result) == comments_above(found.file, found.name):
                result.action = "unchanged"
                continue
            result.action = "updated"
            edit_of(found.file).replace[found.name] = (item, comments_for(result))
            continue
        assert result.agent is not None
        name = task_name(result.agent, result.job_name, result.job_id, result.gateway, taken)
        taken.add(name)
        path = output_for[result.gateway]
        result.task_name, result.file, result.action = name, str(path), "new"
        result.task["enabled"] = result.source_enabled
        edit_of(path).append_tasks.append((task_item(result, name, result.source_enabled), comments_for(result)))

    texts: dict[Path, str] = {}
    old_texts: dict[Path, str | None] = {}
    for path, edit in edits.items():
        if edit.empty:
            continue
        old = path.read_text(encoding="utf-8") if path.exists() else None
        new = apply_edit(old, edit) if old is not None and old.strip() else new_file_text(edit, header)
        _check_roundtrip(old, new, edit)
        texts[path], old_texts[path] = new, old
    return ImportPlan(texts, old_texts, results, conflicts, new_agents)


def _lost_job_task(state: CatalogState, result: JobResult, present: set[Key]) -> FoundTask | None:
    """The imported task whose job is gone and that `export` re-created as this job."""
    found = state.tasks.get(result.exported_for or "")
    if found is None or found.key is None or found.key[:2] != result.key[:2] or found.key in present:
        return None
    return found


def _keep_runtime_fields(result: JobResult, existing: Mapping[str, Any]) -> None:
    """A job that is off in the source (after --disable-source, say) neither turns its task off
    nor moves its interval's grid: without a next run, the product's state says nothing new."""
    assert result.task is not None
    schedule, before = result.task.get("schedule") or {}, existing.get("schedule")
    if isinstance(before, dict) and "every" in schedule and before.get("every") == schedule.get("every") and "anchor" in before:
        result.task["schedule"] = {**schedule, "anchor": _plain(before)["anchor"]}


def comments_above(path: Path, name: str) -> list[str]:
    """The `# imported:` comment lines right above a task's list item."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    layout = _layout(text, "tasks")
    for (first, _end, _dash), item_name in zip(layout.items, layout.names, strict=True):
        if item_name == name:
            comments: list[str] = []
            while first > 0 and lines[first - 1].lstrip().startswith(MARKER.strip()):
                first -= 1
                comments.insert(0, lines[first].strip()[len(MARKER):])
            return comments
    return []


def yaml_string(value: str) -> str:
    """`value` written so that YAML reads it back as that string: a digest of digits alone
    (1 in 1,800) would otherwise read back as a number, quoted as the importer's dump quotes it."""
    return yaml.safe_dump([value], default_flow_style=True, width=100_000).strip()[1:-1]


def _scalar_span(node: yaml.ScalarNode) -> tuple[int, int, int, int]:
    return node.start_mark.line, node.start_mark.column, node.end_mark.line, node.end_mark.column


def set_task_enabled(root: Path, names: Iterable[str], enabled: bool) -> dict[Path, str]:
    """New texts of the files holding these tasks with `enabled` set, by editing that one value
    (and the import digest, for a task untouched since its import, so a later import still
    updates it); every other character stays."""
    state = CatalogState.scan(root)
    by_file: dict[Path, list[FoundTask]] = {}
    for name in names:
        found = state.tasks.get(name)
        if found is not None and bool(found.raw.get("enabled", True)) != enabled:
            by_file.setdefault(found.file, []).append(found)
    texts: dict[Path, str] = {}
    value = "true" if enabled else "false"
    for path, found_tasks in by_file.items():
        text = path.read_text(encoding="utf-8")
        wanted = {f.name: f for f in found_tasks}
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        edits: list[tuple[int, int, int, int, str]] = []  # (line, col, end line, end col, new text)
        for key_node, seq in root_node.value:
            if key_node.value != "tasks" or not isinstance(seq, yaml.SequenceNode):
                continue
            for item in seq.value:
                if not isinstance(item, yaml.MappingNode) or item.flow_style:
                    continue
                pairs = {k.value: (k, v) for k, v in item.value}
                name_pair = pairs.get("name")
                if name_pair is None or name_pair[1].value not in wanted:
                    continue
                found = wanted[name_pair[1].value]
                new_raw = {**_plain(found.raw), "enabled": enabled}
                if "enabled" in pairs and isinstance(pairs["enabled"][1], yaml.ScalarNode):
                    edits.append((*_scalar_span(pairs["enabled"][1]), value))
                else:
                    last_key = item.value[-1][0]
                    line = _content_end(item)
                    edits.append((line, 0, line, 0, " " * last_key.start_mark.column + f"enabled: {value}\n"))
                if found.untouched and "tags" in pairs and isinstance(pairs["tags"][1], yaml.MappingNode):
                    tag_nodes = {k.value: v for k, v in pairs["tags"][1].value}
                    digest_node = tag_nodes.get(TAG_DIGEST)
                    if isinstance(digest_node, yaml.ScalarNode) and digest_node.style in (None, "'", '"'):
                        edits.append((*_scalar_span(digest_node), yaml_string(content_digest(new_raw))))
        offsets = [0]
        for line in text.splitlines(keepends=True):
            offsets.append(offsets[-1] + len(line))
        new = text if text.endswith("\n") else text + "\n"
        for line, col, end_line, end_col, replacement in sorted(edits, reverse=True):
            start = offsets[min(line, len(offsets) - 1)] + col
            end = offsets[min(end_line, len(offsets) - 1)] + end_col
            new = new[:start] + replacement + new[end:]
        _check_enabled_edit(path, text, new, wanted, enabled)
        texts[path] = new
    return texts


def _check_enabled_edit(path: Path, old_text: str, new_text: str, names: Mapping[str, Any], enabled: bool) -> None:
    old, new = yaml.safe_load(old_text) or {}, yaml.safe_load(new_text) or {}
    expected = _plain(old)
    for item in expected.get("tasks") or []:
        if isinstance(item, dict) and item.get("name") in names:
            item["enabled"] = enabled
            tags = item.get("tags") or {}
            if TAG_DIGEST in tags and names[item["name"]].untouched:
                tags[TAG_DIGEST] = content_digest(item)
    if _plain(new) != expected:
        raise CatalogWriteError(f"{path}: setting `enabled` would change more than that; nothing written")
