"""Bounded, safe YAML loading with a map from key paths back to lines. Pure: text in, data out.

`load()` reads a single document with a SafeLoader subclass that first bounds it: at most
MAX_ALIASES aliases, MAX_NODES nodes counted with every alias expanded (so a "billion laughs" file
is refused while it is still being parsed, in bounded memory) and MAX_DEPTH levels of nesting. A key
written twice in one mapping is an error (YAML would silently keep the last). `NodeMap` finds the
line of a key path and the text of a scalar as written (`3.10` stays "3.10").
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NODES = 10_000
MAX_DEPTH = 50
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Invalid(Exception):
    """A problem in one document, at a key path inside it (or at a known line)."""

    def __init__(self, path: tuple[str | int, ...], reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs, huge and deeply nested documents while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._expanded = 0              # nodes so far, every alias counted as its whole subtree
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, for nodes fully composed

    def _charge(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise Invalid((), f"document too large: more than {MAX_NODES} YAML nodes"
                               " (counting every alias expanded)", _line_of(mark))

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise Invalid((), f"too many aliases: more than {MAX_ALIASES}", _line_of(event.start_mark))
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # the anchor is still being composed: it refers to itself
                    raise Invalid((), f"recursive alias *{event.anchor}", _line_of(event.start_mark))
                self._charge(size, event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise Invalid((), f"nested too deeply: more than {MAX_DEPTH} levels",
                           _line_of(self.peek_event().start_mark))
        before = self._expanded
        self._charge(1, self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = self._expanded - before
        self._depth -= 1
        return node


def _line_of(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def decode(raw: str | bytes) -> str:
    if isinstance(raw, str):
        # Characters never outnumber UTF-8 bytes, so only a borderline string is encoded to measure.
        size = len(raw) if len(raw) > MAX_FILE_BYTES else len(raw.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            raise Invalid((), f"file too large: more than {MAX_FILE_BYTES} bytes")
        return raw.removeprefix("\ufeff")
    if len(raw) > MAX_FILE_BYTES:
        raise Invalid((), f"file too large: {len(raw)} bytes, more than {MAX_FILE_BYTES}")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise Invalid((), f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}",
                       raw.count(b"\n", 0, e.start) + 1) from None


def load(text: str) -> tuple[Any, Node | None]:
    """The data of a single-document YAML text and its node tree (for lines and raw scalars)."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
        node = loader.get_single_node()
        # Before construction: merge keys (`<<`) are flattened into the mappings then.
        _check_duplicate_keys(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise Invalid((), f"invalid character {chr(e.character)!r} (U+{e.character:04X})", line) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = ": ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise Invalid((), f"invalid YAML: {reason}", _line_of(mark)) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        # e.g. `2024-02-30` resolves as a date that does not exist; `!!int x`.
        raise Invalid((), f"invalid YAML value: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def _check_duplicate_keys(root: Node | None) -> None:
    """A key written twice in one mapping is an error: YAML would silently keep the last."""
    seen: set[int] = set()  # aliases share nodes; visit each once
    stack: list[tuple[Node, tuple[str | int, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                    line = key.start_mark.line + 1
                    if (key.tag, key.value) in first:
                        raise Invalid(path + (key.value,),
                                       f"duplicate key (first on line {first[key.tag, key.value]})", line)
                    first[key.tag, key.value] = line
                stack.append((value, path + (key.value if isinstance(key, ScalarNode) else "?",)))


class NodeMap:
    """Maps key paths of the constructed data back to the YAML nodes they came from."""

    def __init__(self, root: Node | None) -> None:
        self.root = root

    def _find(self, path: tuple[str | int, ...]) -> tuple[Node | None, Node | None]:
        """(the key node or sequence item that names the last element, its value node)."""
        where: Node | None = None
        node = self.root
        for elem in path:
            if isinstance(node, MappingNode):
                # Reversed: the last of equal keys wins, as in construction (merged keys come first).
                match = next(((k, v) for k, v in reversed(node.value)
                              if isinstance(k, ScalarNode) and k.value == str(elem)), None)
                if match is None:
                    return where, None
                where, node = match
            elif isinstance(node, SequenceNode) and isinstance(elem, int) and elem < len(node.value):
                where = node = node.value[elem]
            else:
                return where, None
        return where, node

    def line(self, path: tuple[str | int, ...]) -> int | None:
        """The line of the offending key, or of its closest parent that the file has."""
        where, node = self._find(path)
        found = where or node or self.root
        return found.start_mark.line + 1 if found is not None else None

    def text(self, path: tuple[str | int, ...], value: Any) -> str:
        """A scalar as written (`3.10` stays "3.10", `true` stays "true"), else its str()."""
        _, node = self._find(path)
        if isinstance(node, ScalarNode):
            return str(node.value)
        return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
