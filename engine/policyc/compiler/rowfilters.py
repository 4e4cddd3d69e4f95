"""Row filters as they go into row-security policies: re-printed by pglast from the parse tree,
so comments and layout tricks in the policy file never reach the generated SQL."""

from __future__ import annotations

from typing import Any

import pglast
from pglast.stream import RawStream


def normalize(expression: str) -> str:
    """The filter as a single canonical SQL expression; raises ValueError if it is not one."""
    try:
        tree: Any = pglast.parse_sql(f"SELECT 1 WHERE {expression}")
    except pglast.parser.ParseError as exc:
        raise ValueError(f"row filter does not parse: {exc}") from None
    if len(tree) != 1:
        raise ValueError("row filter must be a single expression")
    stmt = tree[0].stmt
    where = getattr(stmt, "whereClause", None)
    if where is None or getattr(stmt, "fromClause", None) or getattr(stmt, "groupClause", None):
        raise ValueError("row filter must be a single expression")
    return str(RawStream()(where))
