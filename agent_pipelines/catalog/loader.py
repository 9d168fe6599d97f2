"""Load a catalog directory, check every spec, and keep whatever is valid.

Two callers, one code path: `agent-pipelines validate` prints every problem and exits non-zero;
the Dagster code location loads the valid remainder and shows the problems in the UI. One bad
task therefore never takes the others down: it is dropped together with the tasks that depend
on it (and both tasks of a duplicated name, since neither can be trusted to be the right one).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from agent_pipelines.catalog.model import (
    AGENT_SPEC_TYPES,
    SCHEDULE_KINDS,
    AgentSpec,
    BudgetSpec,
    EventSourceSpec,
    FleetSpec,
    TaskSpec,
)
from agent_pipelines.catalog.notification_block import attach_task_notify, validate_notifications, without_notify
from agent_pipelines.catalog.notifications import NotificationsSpec
from agent_pipelines.catalog.retention import RetentionSpec
from agent_pipelines.catalog.templates import BUILTIN_VARIABLES, TemplateProblem, analyze
from agent_pipelines.catalog.versions import prompt_version
from agent_pipelines.catalog.limits import max_file_bytes, max_prompt_chars
from agent_pipelines.catalog.yaml_lines import LineDict, YamlLoadError, line_at, load_yaml_with_lines

CATALOG_ENV_VAR = "AGENT_PIPELINES_CATALOG"
TOP_LEVEL_KEYS = ("agents", "fleets", "tasks", "sources", "budgets", "retention", "notifications")
SpecKind = Literal["file", "agent", "fleet", "task", "source", "budget", "retention", "notifications", "channel", "route"]


@dataclass(frozen=True, order=True)
class CatalogProblem:
    """One problem, located as precisely as the YAML allows."""

    file: str
    line: int | None
    kind: SpecKind
    name: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        subject = f"{self.kind} {self.name!r}" if self.name else ""
        if self.field:
            subject = f"{subject}, field {self.field!r}" if subject else f"field {self.field!r}"
        return f"{where}: {subject + ': ' if subject else ''}{self.message}"


@dataclass(frozen=True)
class Source:
    file: str
    line: int | None


@dataclass(frozen=True)
class Catalog:
    """The valid part of a catalog, plus every problem found in the rest."""

    root: Path
    agents: Mapping[str, AgentSpec]
    tasks: Mapping[str, TaskSpec]  # in dependency order: upstream tasks first
    sources: Mapping[str, EventSourceSpec]
    fleets: Mapping[str, FleetSpec]
    locations: Mapping[str, Source]  # "agent:<name>" / "task:<name>" / "source:<name>"
    problems: tuple[CatalogProblem, ...]
    files: tuple[str, ...]
    budgets: Mapping[str, BudgetSpec] = field(default_factory=dict)  # by name: teams' daily budgets
    retention: RetentionSpec | None = None  # how long execution records stay (None: for ever)
    notifications: NotificationsSpec = field(default_factory=NotificationsSpec)  # channels and routes
    prompt_versions: Mapping[str, str] = field(default_factory=dict)  # what runs (registry applied)
    base_versions: Mapping[str, str] = field(default_factory=dict)  # what the catalog declares

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def regular_tasks(self) -> dict[str, TaskSpec]:
        """Tasks with one prompt per execution (the others are batch tasks)."""
        return {name: t for name, t in self.tasks.items() if not t.is_batch}

    @property
    def batch_tasks(self) -> dict[str, TaskSpec]:
        return {name: t for name, t in self.tasks.items() if t.is_batch}

    def agent_of(self, task: TaskSpec) -> AgentSpec:
        """The task's agent; for a fleet, its first node (they share every setting but the URL)."""
        if task.fleet is not None:
            return self.fleets[task.fleet].node_specs[0]  # type: ignore[return-value]
        assert task.agent is not None
        return self.agents[task.agent]

    def downstream_of(self, name: str) -> list[str]:
        return [t.name for t in self.tasks.values() if name in t.depends_on]

    def fingerprint(self) -> str:
        """Changes whenever the loaded tasks, their versions or the problems change."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        for name, version in sorted(self.prompt_versions.items()):
            digest.update(f"{name}={version};".encode())
        for problem in self.problems:
            digest.update(str(problem).encode())
        object.__setattr__(self, "_fingerprint", digest.hexdigest()[:16])
        return self.__dict__["_fingerprint"]


def default_catalog_path() -> Path:
    """`$AGENT_PIPELINES_CATALOG`, else the example catalog shipped beside the package."""
    configured = os.environ.get(CATALOG_ENV_VAR)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "catalog"


def catalog_files(path: Path) -> list[Path]:
    """The YAML files under `path`, leaving out hidden ones and hidden directories: editors' and
    git's, and a Kubernetes ConfigMap volume's timestamped copy (`..2026_...`, `..data`) of the
    files it also links at the top."""
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.suffix in {".yaml", ".yml"} and p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class _Item:
    """One raw spec with its location, on its way through validation."""

    kind: SpecKind
    file: str
    raw: Any
    line: int | None
    name: str | None = None
    spec: Any = None


class _Problems:
    def __init__(self) -> None:
        self.items: list[CatalogProblem] = []

    def add(self, item: _Item, message: str, field_path: tuple[Any, ...] = (), line: int | None = None) -> None:
        if line is None:
            line = line_at(item.raw, field_path) if field_path else item.line
        dotted = ".".join(str(p) for p in field_path) or None
        self.items.append(CatalogProblem(item.file, line, item.kind, item.name, dotted, message))

    def add_file(self, file: str, line: int | None, message: str) -> None:
        self.items.append(CatalogProblem(file, line, "file", None, None, message))


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read every YAML file under `path`; never raises for a problem in the catalog itself."""
    root = Path(path) if path is not None else default_catalog_path()
    problems = _Problems()
    files = catalog_files(root) if root.exists() else []
    if not root.exists():
        problems.add_file(_display(root), None, "catalog path does not exist")
    elif not files:
        problems.add_file(_display(root), None, "no .yaml or .yml files found")

    raw: dict[str, list[_Item]] = {"agents": [], "fleets": [], "tasks": [], "sources": [], "budgets": [], "retention": [], "notifications": []}
    for file in files:
        _read_file(file, raw, problems)

    agents = _validate_agents(raw["agents"], problems)
    fleets = _validate_fleets(raw["fleets"], problems)
    sources = _validate_each(raw["sources"], EventSourceSpec, problems)
    budgets = _validate_each(raw["budgets"], BudgetSpec, problems)
    retention = _validate_retention(raw["retention"], problems)
    tasks = _validate_tasks(raw["tasks"], agents, fleets, sources, problems)
    notifications = validate_notifications(raw["notifications"], problems)
    attach_task_notify(tasks.values(), notifications, problems)
    ordered = _drop_cycles_and_dependents(tasks, problems)

    locations = {f"{i.kind}:{i.name}": Source(i.file, i.line) for items in raw.values() for i in items if i.name}
    valid_tasks = {name: tasks[name].spec for name in ordered}
    catalog = Catalog(
        root=root,
        agents=agents,
        tasks=valid_tasks,
        sources=sources,
        fleets=fleets,
        locations=locations,
        problems=tuple(sorted(problems.items, key=lambda p: (p.file, p.line or 0, p.message))),
        files=tuple(_display(f) for f in files),
        budgets=budgets,
        retention=retention,
        notifications=notifications,
    )
    versions = {name: prompt_version(spec, catalog.agent_of(spec)) for name, spec in valid_tasks.items()}
    object.__setattr__(catalog, "prompt_versions", versions)
    object.__setattr__(catalog, "base_versions", dict(versions))
    return catalog


def _read_file(file: Path, raw: dict[str, list[_Item]], problems: _Problems) -> None:
    shown = _display(file)
    try:
        document = load_yaml_with_lines(file, max_bytes=max_file_bytes())
    except YamlLoadError as exc:
        problems.add_file(shown, exc.line, exc.message)
        return
    if document is None:
        return
    if not isinstance(document, LineDict):
        problems.add_file(
            shown,
            getattr(document, "line", 1),
            "top level must be a mapping with `agents:`, `fleets:`, `tasks:`, `sources:` and/or `budgets:`",
        )
        return
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            problems.add_file(
                shown, document.line_of(key), f"unknown top-level key {key!r}{_suggest(key, TOP_LEVEL_KEYS)}"
            )
    if "notifications" in document:
        raw["notifications"].append(_Item(kind="notifications", file=shown, raw=document["notifications"], line=document.line_of("notifications")))
    if "retention" in document:
        raw["retention"].append(_Item(kind="retention", file=shown, raw=document["retention"], line=document.line_of("retention")))
    for key, kind in (("agents", "agent"), ("fleets", "fleet"), ("tasks", "task"), ("sources", "source"), ("budgets", "budget")):
        bucket = raw[key]
        entries = document.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.add_file(shown, document.line_of(key), f"`{key}` must be a list of {kind} specs")
            continue
        for index, entry in enumerate(entries):
            line = entries.line_of(index) if hasattr(entries, "line_of") else None
            item = _Item(kind=kind, file=shown, raw=entry, line=getattr(entry, "line", line))
            if not isinstance(entry, dict):
                problems.add(item, f"each entry of `{key}` must be a mapping, got {type(entry).__name__}")
                continue
            name = entry.get("name")
            item.name = name if isinstance(name, str) else None
            if item.name is None:
                message = (
                    "`name` is required"
                    if name is None
                    else f"`name` must be a string, YAML read {name!r} (quote it)"
                )
                problems.add(item, message, ("name",))
                continue
            bucket.append(item)


def _suggest(word: Any, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _report_validation_error(item: _Item, exc: ValidationError, model: type, problems: _Problems) -> None:
    for error in exc.errors():
        loc = tuple(error["loc"])
        if len(loc) > 2 and loc[0] == "schedule" and loc[1] in SCHEDULE_KINDS:
            loc = (loc[0], *loc[2:])  # drop pydantic's union tag
        if len(loc) > 2 and loc[0] == "auth" and loc[1] in ("bearer", "hmac"):
            loc = (loc[0], *loc[2:])
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = getattr(model, "model_fields", {}).keys() if len(loc) == 1 else ()
            message = f"unknown field {loc[-1]!r}{_suggest(loc[-1], allowed)}"
        elif kind == "missing":
            message = "required field is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.add(item, message, loc)


def _validate_retention(items: list[_Item], problems: _Problems) -> RetentionSpec | None:
    """The one top-level `retention:` mapping (agent_pipelines.catalog.retention)."""
    if len(items) > 1:
        places = ", ".join(f"{i.file}:{i.line}" for i in items)
        for item in items:
            problems.add(item, f"`retention` is declared {len(items)} times ({places}); declare it once")
        return None
    for item in items:
        if not isinstance(item.raw, dict):
            problems.add(item, "`retention` must be a mapping, e.g. {keep_days: 90, archive: true}")
            return None
        try:
            return RetentionSpec.model_validate(dict(item.raw))
        except ValidationError as exc:
            first = len(problems.items)
            _report_validation_error(item, exc, RetentionSpec, problems)
            problems.items[first:] = [
                dataclasses.replace(p, field=f"retention.{p.field}" if p.field else "retention") for p in problems.items[first:]
            ]
    return None


def _check_duplicates(items: list[_Item], problems: _Problems) -> list[_Item]:
    by_name: dict[str, list[_Item]] = {}
    for item in items:
        by_name.setdefault(item.name or "", []).append(item)
    unique: list[_Item] = []
    for name, group in by_name.items():
        if len(group) == 1:
            unique.append(group[0])
            continue
        places = ", ".join(f"{i.file}:{i.line}" for i in group)
        for item in group:
            problems.add(item, f"duplicate {item.kind} name {name!r} (defined at {places}); all copies are dropped", ("name",))
    return unique


def _validate_agents(items: list[_Item], problems: _Problems) -> dict[str, AgentSpec]:
    agents: dict[str, AgentSpec] = {}
    for item in _check_duplicates(items, problems):
        kind = item.raw.get("kind")
        model = AGENT_SPEC_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            problems.add(
                item,
                f"unknown agent kind {kind!r}; expected one of {', '.join(AGENT_SPEC_TYPES)}"
                + _suggest(kind, AGENT_SPEC_TYPES),
                ("kind",),
            )
            continue
        try:
            agents[item.name] = model.model_validate(dict(item.raw))
        except ValidationError as exc:
            _report_validation_error(item, exc, model, problems)
    return agents


def _validate_fleets(items: list[_Item], problems: _Problems) -> dict[str, FleetSpec]:
    """A fleet is its own fields plus agent fields shared by every node, checked as agents."""
    fleets: dict[str, FleetSpec] = {}
    for item in _check_duplicates(items, problems):
        raw = dict(item.raw)
        kind = raw.get("kind")
        model = AGENT_SPEC_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            problems.add(
                item,
                f"unknown agent kind {kind!r}; expected one of {', '.join(AGENT_SPEC_TYPES)}" + _suggest(kind, AGENT_SPEC_TYPES),
                ("kind",),
            )
            continue
        fleet_raw = {k: v for k, v in raw.items() if k in FleetSpec.FLEET_FIELDS}
        shared = {k: v for k, v in raw.items() if k not in FleetSpec.FLEET_FIELDS}
        try:
            fleet = FleetSpec.model_validate(fleet_raw)
        except ValidationError as exc:
            _report_validation_error(item, exc, FleetSpec, problems)
            continue
        nodes = []
        ok = True
        for index, node in enumerate(fleet.node_list()):
            try:
                nodes.append(
                    model.model_validate({**shared, "kind": kind, "name": f"{fleet.name}_{node.name}", "base_url": node.base_url})
                )
            except ValidationError as exc:
                for error in exc.errors():
                    loc = tuple(error["loc"])
                    if loc[:1] == ("base_url",):
                        loc = ("nodes", index, "base_url") if fleet.nodes else ("base_url_template",)
                    elif index > 0:
                        continue  # shared settings: reported once, for the first node
                    message = "unknown field " + repr(loc[-1]) + _suggest(loc[-1], set(model.model_fields) | FleetSpec.FLEET_FIELDS) if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
                    problems.add(item, message, loc)
                ok = False
        names = [n.name for n in fleet.node_list()]
        if len(set(names)) != len(names):
            problems.add(item, "node names must be unique", ("nodes",))
            ok = False
        if ok:
            fleets[item.name] = fleet.model_copy(update={"node_specs": tuple(nodes)})
    return fleets


SpecT = TypeVar("SpecT", EventSourceSpec, BudgetSpec)


def _validate_each(items: list[_Item], spec_type: type[SpecT], problems: _Problems) -> dict[str, SpecT]:
    """Specs that depend on no other spec (sources, budgets), by name."""
    valid: dict[str, SpecT] = {}
    for item in _check_duplicates(items, problems):
        try:
            valid[item.name] = spec_type.model_validate(dict(item.raw))
        except ValidationError as exc:
            _report_validation_error(item, exc, spec_type, problems)
    return valid


def _validate_tasks(
    items: list[_Item],
    agents: Mapping[str, AgentSpec],
    fleets: Mapping[str, FleetSpec],
    sources: Mapping[str, EventSourceSpec],
    problems: _Problems,
) -> dict[str, _Item]:
    unique = _check_duplicates(items, problems)
    declared = {item.name for item in items}
    valid: dict[str, _Item] = {}
    for item in unique:
        try:
            spec = TaskSpec.model_validate(without_notify(item.raw))
        except ValidationError as exc:
            _report_validation_error(item, exc, TaskSpec, problems)
            continue
        ok = True
        if spec.agent is not None and spec.agent not in agents:
            declared_agents = sorted(agents)
            raw_agent_names = {p.name for p in problems.items if p.kind == "agent"}
            reason = (
                f"agent {spec.agent!r} is invalid (see its own errors)"
                if spec.agent in raw_agent_names
                else f"unknown agent {spec.agent!r}{_suggest(spec.agent, declared_agents)}"
            )
            problems.add(item, reason, ("agent",))
            ok = False
        for field_path, name in (
            (("checks", "judge", "agent"), spec.checks.judge.agent if spec.checks and spec.checks.judge else None),
            (("tuning", "tuner"), spec.tuning.tuner if spec.tuning else None),
        ):
            if name is not None and name not in agents:
                problems.add(item, f"unknown agent {name!r}{_suggest(name, agents)}", field_path)
                ok = False
        if spec.fleet is not None and spec.fleet not in fleets:
            problems.add(item, f"unknown fleet {spec.fleet!r}{_suggest(spec.fleet, fleets)}", ("fleet",))
            ok = False
        if spec.items is not None and spec.items.path is not None:
            resolved = (Path(item.file).parent / spec.items.path).resolve()
            if not resolved.is_file():
                problems.add(item, f"items file {spec.items.path!r} not found (looked at {resolved})", ("items", "path"))
                ok = False
            else:
                spec = spec.model_copy(update={"items": spec.items.model_copy(update={"path": str(resolved)})})
        if spec.items is not None and spec.items.from_task is not None:
            upstream = next((i for i in items if i.name == spec.items.from_task), None)
            if upstream is None:
                problems.add(item, f"unknown task {spec.items.from_task!r}{_suggest(spec.items.from_task, declared)}", ("items", "from_task"))
                ok = False
            elif not (isinstance(upstream.raw, dict) and upstream.raw.get("items")):
                problems.add(item, f"task {spec.items.from_task!r} is not a batch task (it has no `items`)", ("items", "from_task"))
                ok = False
        if spec.items is not None:
            spec, items_ok = _check_item_source(item, spec, items, declared, problems)
            ok = ok and items_ok
        for index, dep in enumerate(spec.depends_on):
            upstream = next((i for i in items if i.name == dep), None)
            if upstream is not None and isinstance(upstream.raw, dict) and upstream.raw.get("items"):
                problems.add(
                    item,
                    f"{dep!r} is a batch task: its output is a table; read it with `items.from_task`",
                    ("depends_on", index),
                )
                ok = False
        item.spec = spec
        for index, subscription in enumerate(spec.events):
            if subscription.source not in sources:
                problems.add(
                    item,
                    f"unknown event source {subscription.source!r}{_suggest(subscription.source, sources)}",
                    ("events", index, "source"),
                )
                ok = False
        for index, dep in enumerate(spec.depends_on):
            if dep not in declared:
                problems.add(item, f"unknown task {dep!r}{_suggest(dep, declared)}", ("depends_on", index))
                ok = False
        ok = _check_template(item, spec, problems) and ok
        if ok:
            valid[item.name] = item
    return valid


def _check_item_source(
    item: _Item, spec: TaskSpec, items: list[_Item], declared: set[str | None], problems: _Problems
) -> tuple[TaskSpec, bool]:
    """`glob` resolved against the YAML file's directory; `from_output` names a regular task;
    `shard_by` shards come from a file's column values, so it needs `path`."""
    assert spec.items is not None
    ok = True
    if spec.items.glob is not None:
        pattern = os.path.normpath(Path(item.file).parent.resolve() / spec.items.glob)
        spec = spec.model_copy(update={"items": spec.items.model_copy(update={"glob": pattern})})
    if spec.items.from_output is not None:
        name = spec.items.from_output
        upstream = next((i for i in items if i.name == name), None)
        if upstream is None:
            problems.add(item, f"unknown task {name!r}{_suggest(name, declared)}", ("items", "from_output"))
            ok = False
        elif isinstance(upstream.raw, dict) and upstream.raw.get("items"):
            problems.add(
                item, f"task {name!r} is a batch task: read its results with `items.from_task`", ("items", "from_output")
            )
            ok = False
    if spec.shard_by is not None and spec.items.kind not in ("path", "from_task"):
        problems.add(
            item,
            f"`shard_by` makes one shard per value of a column of an items file; items from "
            f"`{spec.items.kind}` need `shards: N` (or a fleet)",
            ("shard_by",),
        )
        ok = False
    return spec, ok


def _check_template(item: _Item, spec: TaskSpec, problems: _Problems) -> bool:
    ok = True
    allowed = set(spec.variables) | (BUILTIN_VARIABLES - {"upstream", "event", "item", "shard"})
    if spec.depends_on:
        allowed.add("upstream")
    if spec.is_batch:
        allowed |= {"item", "shard"}
    if spec.events:
        allowed.add("event")
    limit = max_prompt_chars()
    for field_name in ("prompt", "system"):
        source = getattr(spec, field_name)
        if source is None:
            continue
        field_line = line_at(item.raw, (field_name,))
        if len(source) > limit:
            problems.add(
                item,
                f"{field_name} is {len(source):,} characters, over the limit of {limit:,} "
                "(raise AGENT_PIPELINES_MAX_PROMPT_CHARS to allow it)",
                (field_name,),
            )
            ok = False
            continue
        try:
            names = analyze(source)
        except TemplateProblem as exc:
            problems.add(item, exc.message, (field_name,), line=_template_line(item, field_name, field_line, exc.line))
            ok = False
            continue
        for name in sorted(names.variables - allowed):
            if name == "upstream":
                hint = "`upstream` is only available to tasks with `depends_on`"
            elif name == "event":
                hint = "`event` is only available to tasks with `events:` subscriptions"
            elif name in ("item", "shard"):
                hint = f"`{name}` is only available to batch tasks (tasks with `items`)"
            else:
                hint = f"declare it under `variables:`{_suggest(name, allowed)}"
            problems.add(item, f"undefined template variable {name!r}: {hint}", (field_name,))
            ok = False
        for ref in sorted(names.upstream - set(spec.depends_on)):
            problems.add(
                item,
                f"template reads upstream.{ref} but {ref!r} is not in depends_on",
                (field_name,),
            )
            ok = False
    return ok


def _template_line(item: _Item, field_name: str, field_line: int | None, template_line: int | None) -> int | None:
    """The file line of a template's line: a block scalar (`prompt: |`) starts on the next line."""
    if field_line is None or template_line is None:
        return field_line
    block = field_name in getattr(item.raw, "block_scalars", frozenset())
    return field_line + template_line if block else field_line + template_line - 1


def _drop_cycles_and_dependents(tasks: dict[str, _Item], problems: _Problems) -> list[str]:
    """Report cycles, drop tasks whose upstream is invalid, return the rest upstream-first."""
    graph = {name: [d for d in _deps(item.spec) if d in tasks] for name, item in tasks.items()}
    cycles = _cycles(graph)
    for cycle in cycles:
        path = " -> ".join([*cycle, cycle[0]])
        for name in cycle:
            problems.add(tasks[name], f"dependency cycle: {path}", ("depends_on",))
    in_cycle = {name for cycle in cycles for name in cycle}

    dependents: dict[str, list[str]] = {name: [] for name in tasks}
    waiting = {name: len(set(deps)) for name, deps in graph.items()}
    for name, deps in graph.items():
        for dep in set(deps):
            dependents[dep].append(name)
    kept: set[str] = set()
    order: list[str] = []
    ready = sorted(name for name, count in waiting.items() if count == 0)
    processed: set[str] = set()
    while ready:
        name = ready.pop(0)
        processed.add(name)
        item = tasks[name]
        bad = [d for d in _deps(item.spec) if d not in kept]
        if bad:
            _report_dropped_dependency(item, bad[0], problems)
        else:
            kept.add(name)
            order.append(name)
        for child in sorted(dependents[name]):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    for name in sorted(set(tasks) - processed - in_cycle):
        item = tasks[name]
        bad = next(d for d in _deps(item.spec) if d not in kept)
        _report_dropped_dependency(item, bad, problems)
    return order


def _deps(spec: TaskSpec) -> list[str]:
    """Tasks this one needs: `depends_on`, and the task its items come from."""
    source = (spec.items.from_task or spec.items.from_output) if spec.items is not None else None
    return [*spec.depends_on, *([source] if source else [])]


def _report_dropped_dependency(item: _Item, dep: str, problems: _Problems) -> None:
    items_field = "from_output" if item.spec.items is not None and item.spec.items.from_output else "from_task"
    where = ("depends_on", item.spec.depends_on.index(dep)) if dep in item.spec.depends_on else ("items", items_field)
    problems.add(item, f"depends on task {dep!r}, which is invalid; dropped with it", where)


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Dependency cycles: strongly connected components of 2+ tasks, or a task needing itself.

    Tarjan's algorithm, iterative so that a long chain of tasks cannot hit the recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_pos = work.pop()
            if child_pos == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = graph.get(node, [])
            if child_pos < len(children):
                work.append((node, child_pos + 1))
                child = children[child_pos]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in children:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1 or node in children:
                    result.append(sorted(component))
    return result
