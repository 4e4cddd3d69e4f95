"""Row filters as they go into row-security policies: re-printed by pglast from the parse tree,
so comments and layout tricks in the policy file never reach the generated SQL.

Identity lookups (``policyc.claim(...)``, ``policyc.agent()``, ``policyc.session_id()``) are
wrapped in scalar subqueries: the planner then evaluates each once per statement (an InitPlan)
instead of once per row.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast
from pglast.enums import SubLinkType
from pglast.stream import RawStream
from pglast.visitors import Visitor

IDENTITY_FUNCTIONS = {"claim", "agent", "session_id"}


class _OncePerStatement(Visitor):
    def visit_FuncCall(self, ancestors: Any, node: Any) -> Any:
        names = [getattr(n, "sval", None) for n in node.funcname]
        if len(names) == 2 and names[0] == "policyc" and names[1] in IDENTITY_FUNCTIONS:
            return ast.SubLink(
                subLinkType=SubLinkType.EXPR_SUBLINK,
                subselect=ast.SelectStmt(targetList=(ast.ResTarget(val=node),)),
            )
        return None


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
    _OncePerStatement()(where)
    return str(RawStream()(where))
