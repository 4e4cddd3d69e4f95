"""The vetted registry of ``pg_catalog`` functions and catalog relations (issue #11, class 2).

The proxy judges function calls by an allow-list: every function *name* in ``pg_catalog`` of a
supported PostgreSQL major is classified in a checked-in file (``pg<major>_functions.tsv``),
and every relation of ``pg_catalog`` and ``information_schema`` is marked allowed or refused
(``pg<major>_relations.tsv``).  A name the registry does not know is unknown: callers refuse it.

The proxy sees only names, not argument types, so a name's class is the strictest class among
its overloads.  Names are the exact ``pg_proc.proname`` (all lower case except PostgreSQL's
``RI_FKey_*`` trigger functions); :meth:`Registry.function_class` does not fold case, so pass
the name as the server resolves it (the parser already folds unquoted identifiers).

``scripts/function_registry.py`` proposes classes for a new major and checks a server against
the files; ``docs/function-registry.md`` explains the classes and the relation policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Final

from policyc.errors import InternalError, PolicycError

__all__ = [
    "AGENT_CALLABLE",
    "PROPOSED_MARK",
    "STRICTNESS",
    "SUPPORTED_MAJORS",
    "FunctionClass",
    "Registry",
    "RegistryError",
    "functions_file",
    "load_registry",
    "parse_functions",
    "parse_relations",
    "registry_for_server_version",
    "relations_file",
    "stricter",
]


class RegistryError(PolicycError):
    """The registry cannot judge: an unsupported server major or a malformed data file."""

    code = "registry"
    sqlstate = InternalError.sqlstate


class FunctionClass(StrEnum):
    """What calling a function can do; see docs/function-registry.md."""

    PURE = "pure"  # computes from its arguments, the clock or constants
    SESSION = "session"  # reads or reports the caller's own session or transaction
    CATALOG = "catalog"  # reads catalog metadata (privilege-filtered or harmless)
    ACTIVITY = "activity"  # other sessions' activity, locks, statistics; relation sizes
    SIDE_EFFECT = "side_effect"  # changes state or holds resources
    SQL_TEXT = "sql_text"  # runs SQL given as text, or reads whole tables named by text
    FILE_NETWORK = "file_network"  # server files, network, other servers
    ADMIN = "admin"  # server administration, replication, backups
    INTERNAL = "internal"  # type I/O, support, trigger and handler functions


#: The classes an agent may call without its group's ``functions:`` list naming the function.
AGENT_CALLABLE: Final[frozenset[FunctionClass]] = frozenset(
    {FunctionClass.PURE, FunctionClass.SESSION, FunctionClass.CATALOG}
)

#: Order from the most to the least permissive; a name's class is the strictest of its overloads.
STRICTNESS: Final[tuple[FunctionClass, ...]] = (
    FunctionClass.PURE,
    FunctionClass.SESSION,
    FunctionClass.CATALOG,
    FunctionClass.ACTIVITY,
    FunctionClass.SIDE_EFFECT,
    FunctionClass.SQL_TEXT,
    FunctionClass.FILE_NETWORK,
    FunctionClass.ADMIN,
    FunctionClass.INTERNAL,
)
_RANK: Final[dict[FunctionClass, int]] = {cls: i for i, cls in enumerate(STRICTNESS)}

SUPPORTED_MAJORS: Final[tuple[int, ...]] = (15,)

#: What the maintenance script appends to a line it proposed; such a line does not load.
PROPOSED_MARK: Final[str] = "# proposed"


def stricter(a: FunctionClass, b: FunctionClass) -> FunctionClass:
    """The stricter of two classes."""
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(frozen=True)
class Registry:
    """The vetted functions and catalog relations of one PostgreSQL major."""

    major: int
    functions: Mapping[str, FunctionClass]
    relations: Mapping[tuple[str, str], bool]
    catalog_names: frozenset[str]

    def function_class(self, name: str) -> FunctionClass | None:
        """The class of the ``pg_catalog`` function ``name``; None when unknown (refuse it)."""
        return self.functions.get(name)

    def relation_allowed(self, schema: str, name: str) -> bool | None:
        """Whether agents may read ``schema.name``; None when it is not a catalog relation."""
        return self.relations.get((schema, name))

    def agent_callable(self, name: str) -> bool:
        """True when an agent may call ``name`` without the policy listing it."""
        found = self.functions.get(name)
        return found is not None and found in AGENT_CALLABLE


def functions_file(major: int) -> str:
    return f"pg{major}_functions.tsv"


def relations_file(major: int) -> str:
    return f"pg{major}_relations.tsv"


def content_lines(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Non-comment, non-blank lines as (line number, tab-separated fields)."""
    rows: list[tuple[int, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        if PROPOSED_MARK in raw:
            raise RegistryError(
                f"{source}:{number}: unreviewed proposal (review it, then remove "
                f"{PROPOSED_MARK!r})"
            )
        rows.append((number, raw.split("\t")))
    return rows


def parse_functions(text: str, source: str) -> dict[str, FunctionClass]:
    """``name<TAB>class[<TAB>why]`` lines; raises RegistryError naming ``source:line``."""
    found: dict[str, FunctionClass] = {}
    for number, fields in content_lines(text, source):
        if len(fields) not in (2, 3) or not fields[0] or fields[0] != fields[0].strip():
            raise RegistryError(f"{source}:{number}: expected name<TAB>class<TAB>why")
        name, cls = fields[0], fields[1]
        try:
            found_class = FunctionClass(cls)
        except ValueError:
            raise RegistryError(f"{source}:{number}: unknown class {cls!r}") from None
        if name in found:
            raise RegistryError(f"{source}:{number}: {name} is listed twice")
        found[name] = found_class
    return found


def parse_relations(text: str, source: str) -> dict[tuple[str, str], bool]:
    """``schema<TAB>name<TAB>allowed|refused<TAB>why`` lines; raises RegistryError."""
    found: dict[tuple[str, str], bool] = {}
    for number, fields in content_lines(text, source):
        if len(fields) not in (3, 4) or not fields[0] or not fields[1]:
            raise RegistryError(
                f"{source}:{number}: expected schema<TAB>name<TAB>allowed|refused<TAB>why"
            )
        if fields[2] not in ("allowed", "refused"):
            raise RegistryError(f"{source}:{number}: expected allowed or refused, not "
                                f"{fields[2]!r}")
        key = (fields[0], fields[1])
        if key in found:
            raise RegistryError(f"{source}:{number}: {key[0]}.{key[1]} is listed twice")
        found[key] = fields[2] == "allowed"
    return found


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def load_registry(major: int) -> Registry:
    """The registry of PostgreSQL ``major``; raises RegistryError when it is not supported."""
    if major not in SUPPORTED_MAJORS:
        supported = ", ".join(str(m) for m in SUPPORTED_MAJORS)
        raise RegistryError(
            f"PostgreSQL {major} is not supported by the function registry "
            f"(supported: {supported})"
        )
    ffile, rfile = functions_file(major), relations_file(major)
    try:
        functions = parse_functions(_read(ffile), ffile)
        relations = parse_relations(_read(rfile), rfile)
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"the registry of PostgreSQL {major} cannot be read: "
                            f"{type(exc).__name__}") from exc
    catalog_names = frozenset(name for schema, name in relations if schema == "pg_catalog")
    return Registry(
        major=major,
        functions=MappingProxyType(functions),
        relations=MappingProxyType(relations),
        catalog_names=catalog_names,
    )


def registry_for_server_version(server_version_num: int) -> Registry:
    """The registry for a server's ``server_version_num`` (e.g. 150004 is major 15)."""
    if server_version_num < 100000:
        raise RegistryError(
            f"server_version_num {server_version_num} is older than any supported major"
        )
    return load_registry(server_version_num // 10000)
