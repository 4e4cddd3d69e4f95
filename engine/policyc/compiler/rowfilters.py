"""Row filters as they go into row-security policies: re-printed by pglast from the parse tree,
so comments and layout tricks in the policy file never reach the generated SQL.

Identity lookups (``policyc.claim(...)``, ``policyc.agent()``, ``policyc.session_id()``) are
wrapped in scalar subqueries: the planner then evaluates each once per statement (an InitPlan)
instead of once per row.  :func:`policy_sql` goes one step further for the SQL of the policy
itself: a cast of such a lookup (``policyc.claim('clinic_id')::int``) moves into the subquery,
so the text is converted once per statement too.  :func:`normalize` stays the canonical text
that plan compares and shows.

Given the filtered table, :func:`policy_sql` also turns ``col IN (SELECT x FROM ... WHERE w)``
into ``EXISTS (SELECT 1 FROM ... WHERE (w) AND table.col = x)`` where the filter is true only
if that test is (reached from the top through AND and OR alone, where false and NULL both
refuse the row).  Row security checks a filter as a plain expression, one row at a time (a
write's WITH CHECK and USING, a read under the policy's ``CURRENT_USER <> group OR ...``):
there an ``IN`` subquery is a hashed SubPlan that reads every row the subquery selects once per
statement (all of a tenant's patients for a one-row INSERT of a claim), while ``EXISTS`` lets
the planner choose per row between an index probe on ``x`` and the same hash.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pglast
from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, SetOperation, SubLinkType
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


_PLAIN_SELECT_EMPTY = ("distinctClause", "intoClause", "groupClause", "havingClause",
                       "windowClause", "valuesLists", "sortClause", "limitOffset", "limitCount",
                       "lockingClause", "withClause", "larg", "rarg")


def _from_names(items: Any) -> set[str]:
    """Names the FROM items of a subquery bind (aliases, else table names), joins included."""
    names: set[str] = set()
    for item in items or ():
        if isinstance(item, ast.JoinExpr):
            names |= _from_names((item.larg, item.rarg))
            if item.alias is not None:
                names.add(str(item.alias.aliasname))
        elif isinstance(item, ast.RangeVar):
            names.add(str(item.alias.aliasname if item.alias is not None else item.relname))
        elif getattr(item, "alias", None) is not None:
            names.add(str(item.alias.aliasname))
    return names


def _outer_column(node: Any, table: str) -> ast.ColumnRef | None:
    """``node`` as a reference qualified with the filtered table's name, when it is a plain
    column of that table at the top of the filter (``col``, ``table.col``)."""
    if not isinstance(node, ast.ColumnRef):
        return None
    names = [getattr(f, "sval", None) for f in node.fields or ()]
    if None in names or not names:
        return None  # table.*
    if len(names) == 1 or (len(names) == 2 and names[0] == table):
        return ast.ColumnRef(fields=(ast.String(sval=table), ast.String(sval=names[-1])))
    return None


def _as_exists(sublink: Any, table: str) -> ast.SubLink | None:
    """``col IN (SELECT x FROM f WHERE w)`` as ``EXISTS (SELECT 1 FROM f WHERE (w) AND
    table.col = x)``, or None when it is not that plain shape."""
    if sublink.subLinkType != SubLinkType.ANY_SUBLINK:
        return None
    if sublink.operName and [getattr(n, "sval", None) for n in sublink.operName] != ["="]:
        return None
    outer = _outer_column(sublink.testexpr, table)
    select = sublink.subselect
    if outer is None or not isinstance(select, ast.SelectStmt):
        return None
    if select.op not in (None, SetOperation.SETOP_NONE) or any(
            getattr(select, key, None) for key in _PLAIN_SELECT_EMPTY):
        return None
    targets: tuple[Any, ...] = select.targetList or ()
    fields: tuple[Any, ...] = getattr(targets[0].val, "fields", None) or () if targets else ()
    if len(targets) != 1 or not isinstance(targets[0].val, ast.ColumnRef) or not fields \
            or isinstance(fields[-1], ast.A_Star):
        return None
    if not select.fromClause or table in _from_names(select.fromClause):
        return None  # the subquery would hide the filtered table's name
    probe = ast.A_Expr(kind=A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="="),), lexpr=outer,
                       rexpr=targets[0].val)
    where = probe if select.whereClause is None else ast.BoolExpr(
        boolop=BoolExprType.AND_EXPR, args=(select.whereClause, probe))
    return ast.SubLink(
        subLinkType=SubLinkType.EXISTS_SUBLINK,
        subselect=ast.SelectStmt(
            targetList=(ast.ResTarget(val=ast.A_Const(val=ast.Integer(ival=1))),),
            fromClause=select.fromClause, whereClause=where))


def _probes(node: Any, table: str) -> Any:
    """``node`` with every IN subquery in a position where only true passes (through AND and
    OR from the top) rewritten by :func:`_as_exists`."""
    if isinstance(node, ast.BoolExpr) and node.boolop in (BoolExprType.AND_EXPR,
                                                           BoolExprType.OR_EXPR):
        return ast.BoolExpr(boolop=node.boolop,
                            args=tuple(_probes(arg, table) for arg in node.args or ()))
    if isinstance(node, ast.SubLink):
        return _as_exists(node, table) or node
    return node


@lru_cache(maxsize=4096)
def _compile(expression: str, table: str | None = None) -> tuple[str, str]:
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
    if table is not None:
        where = _probes(where, table)
    return canonical, str(RawStream()(where))


def normalize(expression: str) -> str:
    """The filter as a single canonical SQL expression; raises ValueError if it is not one."""
    return _compile(expression)[0]


def policy_sql(expression: str, table: str | None = None) -> str:
    """The filter as it goes into the row-security policy and the view (same rows as
    :func:`normalize`); ``table``: the filtered table's own name, as the policy and the view
    name it (unqualified, no alias), which lets IN subqueries become probes."""
    return _compile(expression, table)[1]
