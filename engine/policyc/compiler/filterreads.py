"""What a row filter reads and calls, for ``policyc plan``'s performance warnings (issue #14).

Row security evaluates a filter for every row it checks, so two things make a filter slow
however the compiler writes it:

* a column it searches by with no index, on a large table: every statement scans the table
  (:func:`filter_reads` lists, per relation the filter reads, the columns it compares with a
  value that does not depend on that relation's row: ``clinic_id = <claim>``, ``v.id =
  claims.visit_id``, ``patient_id IN (SELECT ...)``);
* a function call the compiler does not turn into a once-per-statement InitPlan: the compiler
  wraps identity calls (``policyc.claim('x')``) and a cast of one, nothing else, so
  ``lower(policyc.claim('x'))``, a stable function of constants (``now()``,
  ``to_date('2024-01-01', 'YYYY-MM-DD')``) or an identity call whose argument is a column run
  once per row (:attr:`FilterReads.calls`).  A function of constants that is immutable is
  folded by the planner and costs nothing: plan asks the catalog which ones are.

Heuristic and offline: an unqualified column inside a subquery belongs to that subquery's only
table (with several tables it is not attributed).  Nothing here changes what a filter means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pglast
from pglast import ast
from pglast.enums import A_Expr_Kind, SubLinkType
from pglast.stream import RawStream

from policyc.compiler.rowfilters import IDENTITY_FUNCTIONS
from policyc.policy.model import TableName

SEARCH_OPERATORS = frozenset({"=", "<", ">", "<=", ">="})
AGGREGATES = frozenset(
    {"array_agg", "avg", "bool_and", "bool_or", "count", "every", "max", "min", "string_agg",
     "sum"})


@dataclass
class Relation:
    """One table the filter reads (the filtered table itself, or a subquery's)."""

    table: TableName
    depth: int = 0  # 0: the filtered table; 1: a subquery of the filter; ...
    searched: set[str] = field(default_factory=set)  # columns compared with a value that
    # reads no row of this relation or of a relation nested as deep (a constant, an identity
    # call, a column of an enclosing query)


@dataclass(frozen=True)
class PerRowCall:
    """A function call evaluated once per row that could run once per statement."""

    function: str  # "schema.name" as written ("lower", "pg_catalog.now", "policyc.claim")
    text: str  # the call as SQL
    identity_argument: bool  # an identity call whose argument depends on the row
    of_identity: bool = False  # its arguments read an identity call (never constant-folded)


@dataclass(frozen=True)
class FilterReads:
    relations: tuple[Relation, ...]
    calls: tuple[PerRowCall, ...]


Scope = dict[str, int]  # name a relation is bound to -> index into relations


def _names(node: Any) -> list[str]:
    return [str(getattr(f, "sval", "*")) for f in getattr(node, "fields", None) or ()]


def _func_name(node: ast.FuncCall) -> list[str]:
    return [str(getattr(n, "sval", "")) for n in node.funcname or ()]


def _is_identity(node: Any) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    name = _func_name(node)
    return len(name) == 2 and name[0] == "policyc" and name[1] in IDENTITY_FUNCTIONS


def _contains_identity(node: Any) -> bool:
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if _is_identity(item):
            return True
        if isinstance(item, ast.Node):
            stack.extend(getattr(item, name) for name in item)
        elif isinstance(item, tuple):
            stack.extend(item)
    return False


class _Analysis:
    def __init__(self, table: TableName) -> None:
        self.table = table
        self.relations: list[Relation] = [Relation(table)]
        self.calls: list[PerRowCall] = []

    # --- which relation a column belongs to -------------------------------------------------

    def _resolve(self, ref: Any, scopes: list[Scope]) -> tuple[int, str] | None:
        names = _names(ref)
        if not names or names[-1] == "*":
            return None
        column = names[-1]
        for scope in reversed(scopes):
            if len(names) == 1:
                bound = set(scope.values())
                if len(bound) == 1:
                    return next(iter(bound)), column
                if bound:
                    return None  # several tables: not attributed
                continue
            qualifier = names[-2]
            if qualifier in scope:
                index = scope[qualifier]
                schema = names[-3] if len(names) >= 3 else None
                if schema is None or schema == self.relations[index].table.schema:
                    return index, column
        return None

    def _refs(self, node: Any, scopes: list[Scope]) -> set[int]:
        """Relations (of any scope) whose row ``node`` reads."""
        found: set[int] = set()
        stack: list[Any] = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, ast.ColumnRef):
                hit = self._resolve(item, scopes)
                if hit is not None:
                    found.add(hit[0])
            elif isinstance(item, ast.SelectStmt):
                continue  # a subquery: its own scope (correlation is found when walked)
            elif isinstance(item, ast.Node):
                stack.extend(getattr(item, name) for name in item)
            elif isinstance(item, tuple):
                stack.extend(item)
        return found

    def _searched(self, column_side: Any, other: Any, scopes: list[Scope]) -> None:
        if not isinstance(column_side, ast.ColumnRef):
            return
        hit = self._resolve(column_side, scopes)
        if hit is None:
            return
        relation = self.relations[hit[0]]
        if all(self.relations[i].depth < relation.depth for i in self._refs(other, scopes)):
            relation.searched.add(hit[1])

    # --- the walk -----------------------------------------------------------------------------

    def walk(self, node: Any, scopes: list[Scope], wrapped: bool = False) -> None:
        if isinstance(node, tuple):
            for item in node:
                self.walk(item, scopes, wrapped)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SelectStmt):
            self._select(node, scopes)
            return
        if isinstance(node, ast.A_Expr):
            names = [str(getattr(n, "sval", "")) for n in node.name or ()]
            if node.kind == A_Expr_Kind.AEXPR_OP and names and names[-1] in SEARCH_OPERATORS:
                self._searched(node.lexpr, node.rexpr, scopes)
                self._searched(node.rexpr, node.lexpr, scopes)
            elif node.kind == A_Expr_Kind.AEXPR_IN:
                self._searched(node.lexpr, node.rexpr, scopes)
        elif isinstance(node, ast.SubLink):
            if (node.subLinkType == SubLinkType.ANY_SUBLINK and node.testexpr is not None
                    and isinstance(node.subselect, ast.SelectStmt)):
                self._searched(node.testexpr, (), scopes)
                self.walk(node.testexpr, scopes, wrapped)
                self._select(node.subselect, scopes, against=node.testexpr)
                return
            if node.subLinkType == SubLinkType.EXPR_SUBLINK:
                select = node.subselect
                targets: tuple[Any, ...] = getattr(select, "targetList", None) or ()
                if len(targets) == 1 and not getattr(select, "fromClause", None):
                    # (SELECT f(...)): runs once per statement when f reads no row
                    self.walk(targets[0].val, scopes, wrapped=True)
                    return
        elif isinstance(node, ast.FuncCall):
            self._call(node, scopes, wrapped)
        for name in node:
            self.walk(getattr(node, name), scopes, wrapped)

    def _call(self, node: ast.FuncCall, scopes: list[Scope], wrapped: bool) -> None:
        name = _func_name(node)
        builtin = len(name) == 1 or name[0] == "pg_catalog"
        if node.agg_star or node.agg_distinct or node.over is not None or (
                builtin and name[-1] in AGGREGATES):
            return
        args: tuple[Any, ...] = node.args or ()
        row_free = not any(self._refs(arg, scopes) for arg in args)
        text = str(RawStream()(node))
        if _is_identity(node):
            if not row_free:
                self.calls.append(PerRowCall(".".join(name), text, True))
            return  # wrapped by the compiler when its arguments are constant
        if wrapped or not row_free:
            return
        self.calls.append(PerRowCall(".".join(name), text, False,
                                     of_identity=any(_contains_identity(a) for a in args)))

    def _from(self, items: tuple[Any, ...], scopes: list[Scope]) -> Scope:
        scope: Scope = {}
        for item in items:
            if isinstance(item, ast.JoinExpr):
                scope.update(self._from((item.larg, item.rarg), scopes))
            elif isinstance(item, ast.RangeVar) and item.schemaname:
                self.relations.append(Relation(TableName(item.schemaname, str(item.relname)),
                                               depth=len(scopes)))
                alias = item.alias.aliasname if item.alias is not None else item.relname
                scope[str(alias)] = len(self.relations) - 1
        return scope

    def _select(self, select: ast.SelectStmt, scopes: list[Scope],
                against: Any = None) -> None:
        """A subquery; ``against``: the outer value an IN subquery's one column is compared
        with."""
        scope = self._from(select.fromClause or (), scopes)
        inner = [*scopes, scope]
        targets: tuple[Any, ...] = select.targetList or ()
        if against is not None and len(targets) == 1:
            self._searched(targets[0].val, against, inner)
        for item in select.fromClause or ():
            if isinstance(item, ast.JoinExpr):
                self.walk(item.quals, inner)
        for name in ("targetList", "whereClause", "havingClause"):
            self.walk(getattr(select, name, None), inner)
        for side in ("larg", "rarg"):
            if getattr(select, side, None) is not None:
                self._select(getattr(select, side), scopes)


@lru_cache(maxsize=1024)
def filter_reads(expression: str, table: TableName) -> FilterReads | None:
    """What the row filter ``expression`` on ``table`` searches by and calls per row; None
    when it does not parse (the compiler reports that)."""
    try:
        tree: Any = pglast.parse_sql(f"SELECT 1 WHERE {expression}")
    except pglast.parser.ParseError:
        return None
    where = getattr(tree[0].stmt, "whereClause", None) if len(tree) == 1 else None
    if where is None:
        return None
    analysis = _Analysis(table)
    analysis.walk(where, [{table.name: 0}])
    return FilterReads(tuple(analysis.relations), tuple(analysis.calls))
