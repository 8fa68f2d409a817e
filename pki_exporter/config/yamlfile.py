"""The exporter's one YAML reader (the config file's and the web config's).

PyYAML's safe loader, refusing a key written twice in one mapping (``tenants[0].name:
duplicate key``, with its line and column) instead of silently keeping the last one.
"""

from __future__ import annotations

import json
import re

import yaml

__all__ = ["DuplicateKeyError", "compose_yaml", "join", "read_yaml"]


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key written twice in one mapping; `path` is the key's path (``tenants[0].name``)."""

    def __init__(self, path: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem="duplicate key", problem_mark=mark)
        self.path = path

    @property
    def where(self) -> str:
        mark = self.problem_mark
        return f"line {mark.line + 1} column {mark.column + 1}" if mark else ""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping."""

    def refuse_duplicates(self, root: yaml.Node, *, as_written: bool = False) -> None:
        """Raise `DuplicateKeyError` for the first key written twice in a mapping, walking
        the document in the order it is written. Keys are compared as the loader reads them
        (``1`` and ``01`` are one key), or `as_written` (for a reader of scalars as written,
        such as the web config's: ``1`` and ``01`` are two)."""
        seen: set[int] = set()  # aliases share nodes: each is walked once
        pending: list[tuple[yaml.Node, str]] = [(root, "")]
        while pending:
            node, path = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                keys: set[object] = set()
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *defaults` may be overridden, as YAML says
                    scalar = isinstance(key_node, yaml.ScalarNode)
                    key = key_node.value if as_written and scalar else self._key(key_node)
                    shown = f"{path}.{key}" if path else str(key)
                    where = shown if as_written else join(path, key)
                    if key in keys:
                        raise DuplicateKeyError(where, key_node.start_mark)
                    keys.add(key)
                    children.append((value_node, where))
            pending.extend(reversed(children))  # walked in the order they are written

    def _key(self, node: yaml.Node) -> object:
        """The key as the loader reads it (``1`` and ``01`` are one key), or as written
        when it cannot be read here (the loader then says why, or the caller)."""
        if isinstance(node, yaml.ScalarNode):
            try:
                key = self.construct_object(node, deep=True)
                hash(key)
            except (yaml.YAMLError, ValueError, OverflowError, TypeError):
                return (node.tag, node.value)
            return key
        return (type(node).__name__, id(node))


def compose_yaml(text: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document), each scalar as written.
    Raises `DuplicateKeyError` for a key repeated as written, with its path as written
    (``basic_auth_users.a:b``), else PyYAML's errors."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            loader.refuse_duplicates(node, as_written=True)
        return node
    finally:
        loader.dispose()


def read_yaml(text: str) -> object:
    """The data of `text`, as `yaml.safe_load` reads it, refusing repeated keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.refuse_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: object) -> str:
    """``path.key``; keys that are not plain words are quoted (one line, at most 40 chars)."""
    plain = isinstance(key, str) and _PLAIN_KEY.fullmatch(key)
    shown = str(key) if plain else json.dumps(str(key)[:40])
    return f"{path}.{shown}" if path else shown
