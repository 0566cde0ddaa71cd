"""YAML with line numbers: a safe loader that remembers where each mapping and key was written.

Shared by the YAML prompt-set formats (EM evaluation files, llmcomp question files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_LOADER: Any = None


def line_loader() -> Any:
    """A ``yaml.SafeLoader`` subclass that records, for each mapping it builds, its line and its keys' lines.

    Built on first use so that importing this module does not import PyYAML.
    """
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class LineLoader(yaml.SafeLoader):
        def __init__(self, stream: str):
            super().__init__(stream)
            # id(mapping) -> (1-based line of the mapping, {key: 1-based line}, [(duplicate key, line)])
            self.mapping_lines: dict[int, tuple[int, dict[Any, int], list[tuple[Any, int]]]] = {}

        def construct_yaml_map(self, node: Any) -> Any:
            data: dict[Any, Any] = {}
            yield data
            seen: dict[Any, int] = {}
            duplicates: list[tuple[Any, int]] = []
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        duplicates.append((key_node.value, key_node.start_mark.line + 1))
                    seen[key_node.value] = key_node.start_mark.line + 1
            data.update(self.construct_mapping(node))
            # construct_mapping has flattened merge keys (<<) into node.value, merged pairs first:
            # the last line seen for a key is the one whose value was kept.
            keys: dict[Any, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    keys[self.construct_object(key_node)] = key_node.start_mark.line + 1
            self.mapping_lines[id(data)] = (node.start_mark.line + 1, keys, duplicates)

    LineLoader.add_constructor("tag:yaml.org,2002:map", LineLoader.construct_yaml_map)
    _LOADER = LineLoader
    return LineLoader


def yaml_error(exc: Exception) -> tuple[str, int | None]:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(p for p in parts if p) or str(exc).splitlines()[0]
    return f"invalid YAML: {text}", line


@dataclass
class YamlDocument:
    """A parsed YAML document and where its parts were written."""

    data: Any
    root: Any  # the root node (``root.value[i].start_mark.line`` is item i's line, 0-based)
    mapping_lines: dict[int, tuple[int, dict[Any, int], list[tuple[Any, int]]]]

    def item_line(self, index: int) -> int:
        """1-based line of item ``index`` of a top-level list."""
        return int(self.root.value[index].start_mark.line) + 1

    def lines_of(self, mapping: dict, default: int) -> tuple[dict[Any, int], list[tuple[Any, int]]]:
        """({key: line}, [(duplicate key, line)]) of a mapping built by the loader."""
        _, keys, duplicates = self.mapping_lines.get(id(mapping), (default, {}, []))
        return keys, duplicates


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document with line numbers; raises ``yaml.YAMLError`` (see :func:`yaml_error`)."""
    loader = line_loader()(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
        return YamlDocument(data, root, loader.mapping_lines)
    finally:
        loader.dispose()
