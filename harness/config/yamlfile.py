"""YAML as config and study files are read: YAML 1.2 scalars, a line for every key, and limits.

Every fault (syntax, a duplicate key, an alias bomb, nesting too deep, non-UTF-8 bytes, a huge
file) is a :class:`~harness.config.ConfigError` naming the file and, where there is one, the line.
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml

from harness.config.errors import ConfigError, show

# YAML with line numbers, overrides, canonical form


MAX_YAML_BYTES = 1 << 20
"""A config or study file is at most this big (the largest shipped study is a few KB)."""
MAX_YAML_DEPTH = 100
"""Collections nested deeper than this are refused (a run config is four levels deep)."""
MAX_YAML_VALUES = 100_000
"""A document may hold at most this many values once every alias is expanded (a "billion laughs"
file of 1 KB expands to 10**9 values)."""


class DuplicateKeyError(yaml.composer.ComposerError):
    """A mapping writes the same key twice: YAML would keep only the last value, silently."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {show(key)} (first written on line {first.line + 1}; "
                         "YAML would silently keep only the last value)", again)


class YamlLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2's scalars where PyYAML keeps 1.1's: ``1e-4`` is a float (1.1: a
    string), and only ``true``/``false`` are booleans (1.1 also reads ``on``, ``off``, ``yes``, ``no``
    as booleans, so ``data.scan=off`` would not be the string its option expects).

    It also refuses what PyYAML lets through silently: a key written twice in one mapping
    (:class:`DuplicateKeyError`), collections nested deeper than :data:`MAX_YAML_DEPTH`, and scalars
    whose conversion fails (a date such as ``2024-13-45``, an int of 5000 digits) are errors with a
    line instead of a bare ``ValueError``."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"collections nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a collection as a key is refused by the constructor; `<<` merges are meant to repeat keys
            key = self.construct_object(key_node)
            if key in first:
                raise DuplicateKeyError(key, first[key], key_node.start_mark)
            first[key] = key_node.start_mark
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {show(node.value)}: {e}", node.start_mark) from None


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in YamlLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _YamlFault(Exception):
    """A YAML text that cannot be read: the message, the line (or ``None``) and whether it is a syntax error."""

    def __init__(self, message: str, line: int | None, syntax: bool) -> None:
        super().__init__(message)
        self.line, self.syntax = line, syntax


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node) -> None:
    """Count the document's values with every alias expanded, visiting each node once (memoised
    sizes); refuse more than :data:`MAX_YAML_VALUES`, and aliases inside their own anchor."""
    size: dict[int, int] = {}
    active = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, kids = stack[-1]
        kid = next(kids, None)
        if kid is None:
            stack.pop()
            active.discard(id(node))
            size[id(node)] = min(MAX_YAML_VALUES + 1, 1 + sum(size[id(k)] for k in _children(node)))
        elif id(kid) in active:
            raise _YamlFault("the collection anchored here contains an alias to itself (a recursive document)",
                             kid.start_mark.line + 1, False)
        elif id(kid) not in size:
            active.add(id(kid))
            stack.append((kid, iter(_children(kid))))
    if size[id(root)] > MAX_YAML_VALUES:
        raise _YamlFault(f"the document holds more than {MAX_YAML_VALUES} values once its aliases are expanded "
                         "(an alias bomb?); write the values out or use fewer aliases", None, False)


def _mark_text(e: yaml.MarkedYAMLError) -> str:
    """``while parsing a flow sequence (line 2): expected ',' or ']', but got '<stream end>'``"""
    text = " ".join(p for p in (e.problem, e.note) if p)
    if e.context:
        at = f" (line {e.context_mark.line + 1})" if e.context_mark is not None else ""
        text = f"{e.context}{at}: {text}"
    return text


def _load(text: str) -> tuple[Any, yaml.Node | None]:
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def _parse(text: str) -> tuple[Any, yaml.Node | None]:
    """``text`` -> (data, root node); every fault is a :class:`_YamlFault` with a line where there is one."""
    try:
        return _load(text)
    except DuplicateKeyError as e:
        raise _YamlFault(e.problem, e.problem_mark.line + 1, False) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise _YamlFault(_mark_text(e), mark.line + 1 if mark else None, True) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise _YamlFault(f"character {e.character!r} is not allowed ({e.reason})", line, True) from None
    except yaml.YAMLError as e:
        raise _YamlFault(str(e), None, True) from None
    except RecursionError:  # a safety net: compose_node bounds the depth first
        raise _YamlFault(f"nested too deeply (at most {MAX_YAML_DEPTH} levels)", None, False) from None


def yaml_load(text: str) -> Any:
    """Parse a YAML text with :class:`YamlLoader` and the limits of :func:`read_yaml`; a fault is a
    :class:`ConfigError`."""
    try:
        return _parse(text)[0]
    except _YamlFault as e:
        raise ConfigError(f"line {e.line}: {e}" if e.line else str(e)) from None


class SourceMap:
    """Where each dotted key of a YAML file was written (file and line) for error messages."""

    def __init__(self, path: str | None = None, lines: dict[str, int] | None = None) -> None:
        self.path = path
        self.lines = lines or {}
        self.overrides: dict[str, str] = {}  # dotted key -> the ``a.b=v`` text that set it

    def __call__(self, key: str) -> str:
        # A value set by an override is blamed on the override, not on the YAML line it replaced.
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            text = self.overrides.get(".".join(parts[:i]))
            if text is not None:
                return f"override {text!r}: "
        if self.path is None:
            return ""
        # Fall back to the closest written ancestor: an error in a default still points near it.
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.path}:{line}: "
            parts.pop()
        return f"{self.path}: "


def _read_text(path: Path) -> str:
    """The file's text: at most :data:`MAX_YAML_BYTES`, UTF-8 (a leading byte-order mark is dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes; not a config or study file")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}: {e.reason})") from None


def _key_lines(root: yaml.Node) -> dict[str, int]:
    """Dotted key -> line, walking the node graph once: a node reached again through an alias is not
    walked again (its keys keep the lines under the path that reached it first)."""
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    namer = YamlLoader("")  # keys as the data has them: `null:` is the key None, `0x1:` is 1
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            items = []
            for k, v in node.value:
                name = namer.construct_object(k) if isinstance(k, yaml.ScalarNode) else "?"
                items.append((f"{prefix}.{name}" if prefix else str(name), k, v))
        elif isinstance(node, yaml.SequenceNode):
            items = [(f"{prefix}[{i}]", v, v) for i, v in enumerate(node.value)]
        else:
            continue
        for key, at, child in items:
            lines[key] = at.start_mark.line + 1  # after a `<<` merge, the key written here wins
        stack.extend((child, key) for key, _, child in reversed(items))  # document order
    return lines


def read_yaml(path: str | Path) -> tuple[Any, SourceMap]:
    """Read YAML with a safe loader and record the line of every mapping key.

    Every fault is a :class:`ConfigError` that names the file (and the line where there is one):
    unreadable or non-UTF-8 files, syntax errors, duplicate keys, alias bombs, too deep nesting.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data, node = _parse(text)
    except _YamlFault as e:
        what = f"invalid YAML: {e}" if e.syntax else str(e)
        raise ConfigError(f"{path}:{e.line}: {what}" if e.line else f"{path}: {what}") from None
    if node is None:
        return {}, SourceMap(str(path), {})
    return data, SourceMap(str(path), _key_lines(node))


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``; the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = _parse(raw)[0] if raw.strip() else ""
    except _YamlFault as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key, value
