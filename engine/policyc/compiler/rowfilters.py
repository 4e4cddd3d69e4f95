"""Row filters as they go into row-security policies: re-printed by pglast from the parse tree,
so comments and layout tricks in the policy file never reach the generated SQL.

Identity lookups (``policyc.claim(...)``, ``policyc.agent()``, ``policyc.session_id()``) are
wrapped in scalar subqueries: the planner then evaluates each once per statement (an InitPlan)
instead of once per row.  :func:`policy_sql` goes one step further for the SQL of the policy
itself: a cast of such a lookup (``policyc.claim('clinic_id')::int``) moves into the subquery,
so the text is converted once per statement too.  :func:`normalize` stays the canonical text
that plan compares and shows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pglast
from pglast import ast
from pglast.enums import SubLinkType
from pglast.stream import RawStream
from pglast.visitors import Visitor

IDENTITY_FUNCTIONS = {"claim", "agent", "session_id"}


def _is_identity_call(node: Any) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    names = [getattr(n, "sval", None) for n in node.funcname or ()]
    return len(names) == 2 and names[0] == "policyc" and names[1] in IDENTITY_FUNCTIONS


def _once(value: Any) -> ast.SubLink:
    return ast.SubLink(
        subLinkType=SubLinkType.EXPR_SUBLINK,
        subselect=ast.SelectStmt(targetList=(ast.ResTarget(val=value),)),
    )


class _OncePerStatement(Visitor):
    def visit_FuncCall(self, ancestors: Any, node: Any) -> Any:
        if _is_identity_call(node):
            return _once(node)
        return None


class _CastsInside(Visitor):
    """``CAST((SELECT policyc.claim(...)) AS t)`` -> ``(SELECT CAST(policyc.claim(...) AS t))``"""

    def visit_TypeCast(self, ancestors: Any, node: Any) -> Any:
        sublink = node.arg
        if not (isinstance(sublink, ast.SubLink)
                and sublink.subLinkType == SubLinkType.EXPR_SUBLINK):
            return None
        select = sublink.subselect
        targets: tuple[Any, ...] = getattr(select, "targetList", None) or ()
        if (len(targets) != 1 or getattr(select, "fromClause", None)
                or not _is_identity_call(targets[0].val)):
            return None
        return _once(ast.TypeCast(arg=targets[0].val, typeName=node.typeName))


@lru_cache(maxsize=4096)
def _compile(expression: str) -> tuple[str, str]:
    """(canonical text, policy SQL) of one filter; a policy repeats the same filter for many
    tables and groups, so each distinct text is parsed once."""
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
    canonical = str(RawStream()(where))
    _CastsInside()(where)
    return canonical, str(RawStream()(where))


def normalize(expression: str) -> str:
    """The filter as a single canonical SQL expression; raises ValueError if it is not one."""
    return _compile(expression)[0]


def policy_sql(expression: str) -> str:
    """The filter as it goes into the row-security policy (same rows as :func:`normalize`)."""
    return _compile(expression)[1]
