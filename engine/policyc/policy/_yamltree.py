"""Read a YAML policy into plain data plus the line of every key and list item.

PyYAML's ``safe_load`` forgets where things were written and silently keeps the last of two
equal keys.  Policy errors must name a line and a duplicate key is almost always a mistake (the
first grant is lost without a word), so this module composes the node tree and builds the data
itself: every mapping key and sequence item gets its 1-based start line, duplicates are
reported, and merge keys (``<<``) are refused because they hide where a grant came from.

Scalars follow the YAML 1.2 core schema rather than YAML 1.1: only ``true``/``false`` are
booleans (a column named ``on`` or ``no`` stays a string) and integers are plain decimals
(``1:30`` is not 90).  Mapping keys are always taken as the text written, never resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

__all__ = ["Document", "Path", "read_yaml"]

Path = tuple[str | int, ...]
"""Raw key path: mapping keys as written, list indices as ints."""


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (about ten times faster), else pure Python."""


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2 core booleans and integers."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^[-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """Integers are decimal: a leading zero does not make ``010`` octal."""
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node))
    try:
        return int(text, 10)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "an integer must be written in decimal digits", node.start_mark
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_decimal)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000
"""Aliases can expand a small file enormously ("billion laughs"); stop well before that."""


@dataclass
class Document:
    """A parsed policy: plain data, where each path was written, and what went wrong."""

    data: object = None
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[tuple[Path, int, str]] = field(default_factory=list)


def _mark_line(mark: yaml.Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


def read_yaml(text: str) -> Document:
    """Compose ``text`` and turn it into a :class:`Document`; never raises on bad input."""
    doc = Document()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(((), _mark_line(exc.problem_mark or exc.context_mark), _explain(exc)))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(((), 1, f"YAML error: {exc}"))
        return doc
    finally:
        loader.dispose()
    if node is None:
        doc.problems.append(((), 1, "the policy file is empty"))
        return doc
    builder = _Builder(loader, doc)
    doc.data = builder.build(node, ())
    return doc


def _explain(exc: yaml.MarkedYAMLError) -> str:
    """The parser's complaint, with the line where the unfinished construct began."""
    what = exc.problem or "invalid YAML"
    if "<block end>" in what or what == "did not find expected key":
        what += " (check the indentation)"
    if exc.context and what.startswith("but found"):
        what = f"{exc.context}, {what}"
    elif exc.context:
        began = exc.context_mark
        if (
            began is not None
            and exc.problem_mark is not None
            and began.line != exc.problem_mark.line
        ):
            what += f" ({exc.context} that starts on line {began.line + 1})"
        else:
            what += f" ({exc.context})"
    return f"YAML syntax error: {what}"


class _Builder:
    """Walks composed nodes; keeps lines and collects problems instead of raising."""

    def __init__(self, loader: _Loader, doc: Document) -> None:
        self._loader = loader
        self._doc = doc
        self._open: set[int] = set()
        self._budget = _MAX_NODES

    def build(self, node: yaml.Node, path: Path) -> object:
        self._budget -= 1
        if self._budget < 0:
            if self._budget == -1:
                self._problem(path, node, "the policy is too large (aliases expand too far)")
            return None
        if id(node) in self._open:
            self._problem(path, node, "recursive alias: a value cannot contain itself")
            return None
        self._open.add(id(node))
        try:
            return self._build(node, path)
        finally:
            self._open.discard(id(node))

    def _build(self, node: yaml.Node, path: Path) -> object:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, item in enumerate(node.value):
                self._doc.lines[(*path, index)] = _mark_line(item.start_mark)
                items.append(self.build(item, (*path, index)))
            return items
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        self._problem(path, node, "unsupported YAML node")
        return None

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, object]:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._problem(
                    path, key_node, "merge keys (<<) are not supported: write each entry out"
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(path, key_node, "a key must be a plain name, not a list or mapping")
                continue
            key = str(key_node.value)
            line = _mark_line(key_node.start_mark)
            if key in result:
                first = self._doc.lines.get((*path, key), line)
                self._doc.problems.append(
                    ((*path, key), line, f"duplicate key '{key}' (first written on line {first})")
                )
                continue
            self._doc.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> object:
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self._problem(path, node, f"invalid value: {getattr(exc, 'problem', None) or exc}")
            return None

    def _problem(self, path: Path, node: yaml.Node, message: str) -> None:
        self._doc.problems.append((path, _mark_line(node.start_mark), message))
