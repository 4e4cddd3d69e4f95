"""Load a policy file (format version 1) into :class:`policyc.policy.model.Policy`.

Three passes, each reporting instead of stopping, so ``policyc check`` lists every problem in
one run: YAML with line tracking and duplicate keys (:mod:`._yamltree`), the shipped JSON Schema
(:mod:`._schema`), then the rules that relate values to each other (:mod:`._build`).  Problems
carry ``file:line`` and the dotted key; the model keeps every key's location in
:attr:`Policy.locations` so later stages (the compiler, checking against the live database) can
point at the line too.

Location keys: every mapping key (``groups.billing.read.public.patients``, tables always
schema-qualified), every list item as ``[index]``
(``groups.billing.oidc_groups[0]``) and, for list items that are strings, also by name
(``groups.billing.read.public.patients.ssn``, ``groups.billing.unmask.public.patients.ssn``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path as FilePath

from policyc.errors import Location, PolicyError, Problem
from policyc.policy._build import ROOT_KEY, Builder
from policyc.policy._keypath import dotted
from policyc.policy._schema import schema_problems
from policyc.policy._yamltree import Document, read_yaml
from policyc.policy.model import ColumnRef, Policy

__all__ = ["check_policy", "load_policy", "load_policy_text"]

FILE_KEY = "(file)"
"""Key reported when the file itself cannot be read."""


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy at ``path``; raise :class:`PolicyError` with every problem.

    A relative ``identity.jwks`` path is resolved against the folder of ``path``.
    :attr:`Policy.sha256` is the hash of the file's bytes as read (the policy's version).
    """
    source = os.fspath(path)
    try:
        data = FilePath(source).read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PolicyError([_file_problem(source, "the policy file is not UTF-8 text")]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PolicyError(
            [_file_problem(source, f"cannot read the policy file: {reason}")]
        ) from None
    policy = load_policy_text(text, source=source,
                              base_dir=os.path.dirname(os.path.abspath(source)))
    # one read: the hash is of exactly the bytes that were parsed
    return dataclasses.replace(policy, sha256=hashlib.sha256(data).hexdigest())


def load_policy_text(
    text: str, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Policy:
    """Validate policy YAML given as a string; ``source`` names it in problems.

    A relative ``identity.jwks`` path is resolved against ``base_dir`` (default: the current
    directory). :attr:`Policy.sha256` is the hash of the text's UTF-8 bytes.
    """
    policy, problems = _load(text, source, os.fspath(base_dir) if base_dir else os.getcwd())
    if problems or policy is None:
        raise PolicyError(problems)
    return dataclasses.replace(policy, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def check_policy(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in the policy at ``path``, sorted by location; empty when it is valid."""
    try:
        load_policy(path)
    except PolicyError as exc:
        return list(exc.problems)
    return []


def _file_problem(source: str, message: str) -> Problem:
    return Problem(Location(source, 1, FILE_KEY), message)


def _load(text: str, source: str, base_dir: str) -> tuple[Policy | None, list[Problem]]:
    doc = read_yaml(text)
    problems = [
        Problem(Location(source, line, dotted(path) or ROOT_KEY), message)
        for path, line, message in doc.problems
    ]
    if doc.data is None and doc.problems:
        return None, problems
    builder = Builder(doc, source, base_dir)
    for path, message in schema_problems(doc.data):
        key = dotted(path) or ROOT_KEY
        problems.append(Problem(Location(source, builder.line(path), key), message))
    if not isinstance(doc.data, dict):
        return None, problems
    policy = builder.build()
    problems = [p for p in problems if p.location.key not in builder.supersedes]
    problems.extend(builder.problems)
    if problems:
        return None, _unique(problems)
    return dataclasses.replace(policy, locations=_Locations(doc, source)), []


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


class _Locations(Mapping[str, Location]):
    """:attr:`Policy.locations`, worked out on first use: only problems need a line, and a
    large policy has tens of thousands of keys."""

    def __init__(self, doc: Document, source: str) -> None:
        self._doc = doc
        self._source = source
        self._built: dict[str, Location] | None = None

    def _all(self) -> dict[str, Location]:
        if self._built is None:
            self._built = _locations(self._doc, self._source)
        return self._built

    def __getitem__(self, key: str) -> Location:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"_Locations({len(self)} keys of {self._source})"


def _locations(doc: Document, source: str) -> dict[str, Location]:
    """Every key path (and string list item by name) -> where it was written."""
    locations: dict[str, Location] = {}
    for path, line in sorted(doc.lines.items(), key=lambda item: item[1]):
        key = dotted(path)
        locations.setdefault(key, Location(source, line, key))
        if path and isinstance(path[-1], int):
            item = _item_at(doc.data, path)
            if isinstance(item, str):
                name = str(ColumnRef.parse(item)) if "unmask" in path[-2:-1] else item
                alias = f"{dotted(path[:-1])}.{name}"
                locations.setdefault(alias, Location(source, line, alias))
    return locations


def _item_at(data: object, path: tuple[str | int, ...]) -> object:
    for part in path:
        if isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
            continue
        if not (isinstance(data, dict) and part in data):
            return None
        data = data[part]
    return data
