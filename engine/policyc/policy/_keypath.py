"""Dotted key paths (``groups.billing.read.public.patients``) from raw YAML paths.

Problems and :attr:`Policy.locations` name keys the way a reader thinks of them: table keys are
always schema-qualified (a bare ``patients`` is ``public.patients``), so the compiler can look up
``groups.billing.read.public.patients`` whichever way the author wrote it.  List items are
``[index]``.
"""

from __future__ import annotations

from policyc.policy._yamltree import Path

__all__ = ["dotted", "is_table_position", "normalize", "qualify_table"]

_GROUP_TABLE_SECTIONS = frozenset({"read", "write", "rows"})


def qualify_table(name: str) -> str:
    """``patients`` -> ``public.patients``; qualified names are kept."""
    return name if "." in name else f"public.{name}"


def is_table_position(path: Path, index: int) -> bool:
    """Whether ``path[index]`` is a table key (under ``phi`` or a group's read/write/rows)."""
    if index == 1 and path[0] == "phi":
        return True
    return index == 3 and path[0] == "groups" and path[2] in _GROUP_TABLE_SECTIONS


def normalize(path: Path) -> Path:
    """``path`` with table keys schema-qualified."""
    return tuple(
        qualify_table(part) if isinstance(part, str) and is_table_position(path, i) else part
        for i, part in enumerate(path)
    )


def dotted(path: Path) -> str:
    """The dotted key of a raw path, with table keys normalized."""
    out = ""
    for part in normalize(path):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out
