"""YAML loading that remembers where each mapping and key came from.

Validation messages must name the file *and line*; plain `yaml.safe_load` forgets both, so this
loader returns `LineDict`s that carry the line of the mapping and of each key, and rejects
duplicate keys (which plain YAML silently resolves to the last one).

It also bounds what a document may expand to before anything is built from it: aliases are
shared when loaded, but everything downstream (validation, hashing, JSON) walks them expanded,
so a "billion laughs" file of a few hundred bytes would take gigabytes. A document whose
aliases expand past `MAX_EXPANDED_NODES` nodes, nests deeper than `MAX_DEPTH`, or holds an
alias inside its own anchor is refused at the line of the node that crosses the limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A dict that knows the 1-based line of itself and of each of its keys."""

    line: int | None = None
    key_lines: dict[Any, int]
    block_scalars: frozenset[Any] = frozenset()  # keys whose value is a `|` or `>` block

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


MAX_EXPANDED_NODES = 1_000_000
MAX_DEPTH = 100


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_expansion(root: yaml.Node, max_nodes: int = MAX_EXPANDED_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise `YamlLoadError` if the document, aliases expanded, is too large, too deep or cyclic."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        line = node.start_mark.line + 1
        if finished:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > max_nodes:
                raise YamlLoadError(
                    f"the document expands to more than {max_nodes:,} nodes through its aliases (&anchor/*alias)", line
                )
            continue
        if key in sizes:
            continue
        if key in ancestors:
            raise YamlLoadError("an alias refers to the anchor that contains it: the document would be infinite", line)
        if depth > max_depth:
            raise YamlLoadError(f"the document nests deeper than {max_depth} levels", line)
        ancestors.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in sizes)


# libyaml's parser (when PyYAML has it) is ~5x faster on a 10,000-task catalog; its nodes
# carry the same marks, so line numbers work either way.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return self.construct_document(node)

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
            if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
                mapping.block_scalars |= {key}
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


def load_yaml_with_lines(path: Path, max_bytes: int | None = None) -> Any:
    """Parse one YAML file; raise `YamlLoadError` with the line of any syntax problem, or when
    the file is over `max_bytes`."""
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise YamlLoadError(
                f"file is {size:,} bytes, over the limit of {max_bytes:,} "
                "(split it, or raise AGENT_PIPELINES_MAX_CATALOG_FILE_BYTES)",
                None,
            )
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
    except RecursionError:
        raise YamlLoadError(f"the document nests deeper than {MAX_DEPTH} levels", None) from None


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
