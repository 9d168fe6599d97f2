"""YAML loading that remembers where each mapping and key came from.

Validation messages must name the file *and line*; plain `yaml.safe_load` forgets both, so this
loader returns `LineDict`s that carry the line of the mapping and of each key, and rejects
duplicate keys (which plain YAML silently resolves to the last one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A dict that knows the 1-based line of itself and of each of its keys."""

    line: int | None = None
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line: int | None = None
    item_lines: list[int]

    def line_of(self, index: int) -> int | None:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


class YamlLoadError(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


# libyaml's parser (when PyYAML has it) is ~5x faster on a 10,000-task catalog; its nodes
# carry the same marks, so line numbers work either way.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:  # type: ignore[override]
        self.flatten_mapping(node)
        mapping = LineDict()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in mapping:
                raise YamlLoadError(
                    f"duplicate key {key!r} (first at line {mapping.key_lines[key]})",
                    key_node.start_mark.line + 1,
                )
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:  # type: ignore[override]
        items = LineList(self.construct_object(child, deep=True) for child in node.value)
        items.line = node.start_mark.line + 1
        items.item_lines = [child.start_mark.line + 1 for child in node.value]
        return items


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping
)
_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence
)


def load_yaml_with_lines(path: Path) -> Any:
    """Parse one YAML file; raise `YamlLoadError` with the line of any syntax problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlLoadError(f"cannot read file: {exc}", None) from exc
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except YamlLoadError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlLoadError(f"invalid YAML: {exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlLoadError(f"invalid YAML: {exc}", None) from exc


def line_at(node: Any, path: tuple[Any, ...]) -> int | None:
    """Best line for a location path inside a loaded document (deepest node that exists)."""
    line = getattr(node, "line", None)
    for part in path:
        if isinstance(node, LineDict):
            line = node.line_of(part) if part in node else line
            if part not in node:
                return line
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int):
            line = node.line_of(part)
            if not 0 <= part < len(node):
                return line
            node = node[part]
        else:
            return line
    return getattr(node, "line", None) or line
