"""The registry of risky shapes and of what calling a function does, read from data.

Two checked-in tables, not branches of code (pglast's printer registry is the model): what a
risky shape is and why it is refused (``shapes.tsv``), and which functions give a statement a
risky shape or are safe inside an open transaction (``function_rules.tsv``).  Both are loaded
once, at import, and checked then: a shape the vocabulary does not know, a shape listed twice
or missing, a malformed line all raise :class:`~policyc.proxy.judge.registry.RegistryError`
before the proxy judges a single statement.

Unlike ``pg<major>_functions.tsv`` these rules do not depend on the server's major: they name
what a function does, the per-major file says which functions exist and their class
(``tests/test_registry.py`` checks that the two agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Final

from policyc.proxy.judge.registry import RegistryError, content_lines
from policyc.vocab import APPROVABLE_SHAPES, Shape

__all__ = [
    "ALWAYS_BLOCKED",
    "FUNCTION_RULES_FILE",
    "SHAPES_FILE",
    "SHAPE_TEXTS",
    "TRANSACTION_SAFE",
    "FunctionRules",
    "function_risks",
    "parse_function_rules",
    "parse_shapes",
]

SHAPES_FILE: Final = "shapes.tsv"
FUNCTION_RULES_FILE: Final = "function_rules.tsv"
#: The effect of a function that is safe inside an open transaction.
TRANSACTION_SAFE_EFFECT: Final = "transaction_safe"


def parse_shapes(text: str, source: str) -> tuple[tuple[tuple[Shape, str], ...], dict[Shape, str]]:
    """``shape<TAB>blocked|judged<TAB>text`` lines: (the blocked shapes with their reasons, in
    file order; every shape's text).  Every :class:`~policyc.vocab.Shape` must be listed once,
    and no approvable shape may be blocked."""
    blocked: list[tuple[Shape, str]] = []
    texts: dict[Shape, str] = {}
    for number, fields in content_lines(text, source):
        if len(fields) != 3 or fields[1] not in ("blocked", "judged") or not fields[2]:
            raise RegistryError(f"{source}:{number}: expected shape<TAB>blocked|judged<TAB>text")
        try:
            shape = Shape(fields[0])
        except ValueError:
            raise RegistryError(f"{source}:{number}: unknown shape {fields[0]!r}") from None
        if shape in texts:
            raise RegistryError(f"{source}:{number}: {shape} is listed twice")
        if fields[1] == "blocked":
            if shape in APPROVABLE_SHAPES:
                raise RegistryError(f"{source}:{number}: {shape} is approvable, never blocked")
            blocked.append((shape, fields[2]))
        texts[shape] = fields[2]
    missing = sorted(set(Shape) - set(texts))
    if missing:
        raise RegistryError(f"{source}: shapes not listed: {', '.join(missing)}")
    return tuple(blocked), texts


@dataclass(frozen=True)
class FunctionRules:
    """What calling a function does, by its name as written (its last part)."""

    exact: Mapping[str, frozenset[Shape]]
    # (prefix, suffix, shapes), tried in file order
    patterns: tuple[tuple[str, str, frozenset[Shape]], ...]
    transaction_safe: frozenset[str]

    def risks(self, name: str) -> frozenset[Shape]:
        """Risky shapes of calling ``name``: its exact entry, else the first pattern that
        matches, else none."""
        found = self.exact.get(name)
        if found is not None:
            return found
        for prefix, suffix, shapes in self.patterns:
            if name.startswith(prefix) and name.endswith(suffix):
                return shapes
        return frozenset()


def parse_function_rules(text: str, source: str) -> FunctionRules:
    """``name<TAB>shape[,shape...]`` or ``name<TAB>transaction_safe`` lines; a name with one
    ``*`` is a pattern ``prefix*suffix``.  Raises RegistryError naming ``source:line``."""
    exact: dict[str, frozenset[Shape]] = {}
    patterns: list[tuple[str, str, frozenset[Shape]]] = []
    safe: set[str] = set()
    seen: set[str] = set()
    for number, fields in content_lines(text, source):
        if len(fields) != 2 or not fields[0] or not fields[1] or fields[0].count("*") > 1:
            raise RegistryError(f"{source}:{number}: expected name<TAB>shapes|transaction_safe")
        name, effect = fields
        if name in seen:
            raise RegistryError(f"{source}:{number}: {name} is listed twice")
        seen.add(name)
        if effect == TRANSACTION_SAFE_EFFECT:
            if "*" in name:
                raise RegistryError(f"{source}:{number}: only exact names are transaction safe")
            safe.add(name)
            continue
        try:
            shapes = frozenset(Shape(item) for item in effect.split(","))
        except ValueError:
            raise RegistryError(f"{source}:{number}: unknown shape in {effect!r}") from None
        if "*" in name:
            prefix, _, suffix = name.partition("*")
            patterns.append((prefix, suffix, shapes))
        else:
            exact[name] = shapes
    both = sorted(safe & set(exact))
    if both:
        raise RegistryError(f"{source}: risky and transaction safe at once: {', '.join(both)}")
    return FunctionRules(MappingProxyType(exact), tuple(patterns), frozenset(safe))


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_BLOCKED, _TEXTS = parse_shapes(_read(SHAPES_FILE), SHAPES_FILE)
#: Shapes no group may run, with the reason the agent is told, in the order they are reported.
ALWAYS_BLOCKED: Final[tuple[tuple[Shape, str], ...]] = _BLOCKED
#: What each shape is (a blocked shape: why it is refused).
SHAPE_TEXTS: Final[Mapping[Shape, str]] = MappingProxyType(_TEXTS)
#: The function rules of ``function_rules.tsv``.
FUNCTION_RULES: Final = parse_function_rules(_read(FUNCTION_RULES_FILE), FUNCTION_RULES_FILE)
#: pg_catalog functions that compute from their arguments, the clock or the transaction and
#: act on nothing: calling them inside an open transaction changes nothing outside it.
TRANSACTION_SAFE: Final[frozenset[str]] = FUNCTION_RULES.transaction_safe


def function_risks(name: str) -> frozenset[Shape]:
    """Risky shapes of calling a function, by its last name part (see :class:`FunctionRules`)."""
    return FUNCTION_RULES.risks(name)
