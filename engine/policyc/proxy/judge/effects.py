"""Effect proofs: what running a statement can change, proven from its parse tree.

Never guessed: a statement is side-effect-free, or its effects stay inside the open
transaction, only when its tree holds nothing but node types and functions on an allow-list
(the transaction-safe functions are data: ``registry/function_rules.tsv``).  The proxy uses
these proofs to send a statement upstream while its record is being made durable; anything
not shown to be narrower is ``any`` and waits for its record.
"""

from __future__ import annotations

from typing import Any, Final

from policyc.proxy.judge._ast import JsonNode, names
from policyc.proxy.judge.registry.rules import TRANSACTION_SAFE
from policyc.proxy.judge.statement import Scope

#: Parse-tree nodes a side-effect-free read may contain: an allow-list, so a node type not
#: named here (a function call, TABLESAMPLE, XMLTABLE, a locking clause, a data-modifying
#: CTE, any statement but SELECT/SHOW ...) makes the statement "may have side effects".
_PURE_NODES: Final = frozenset(
    {
        "SelectStmt", "VariableShowStmt", "ResTarget", "ColumnRef", "A_Star", "A_Const",
        "String", "Integer", "Float", "Boolean", "BitString", "ParamRef", "A_Expr",
        "BoolExpr", "NullTest", "BooleanTest", "CoalesceExpr", "MinMaxExpr", "CaseExpr",
        "CaseWhen", "SubLink", "RangeVar", "RangeSubselect", "JoinExpr", "Alias", "SortBy",
        "WithClause", "CommonTableExpr", "List", "TypeCast", "TypeName", "CollateClause",
        "RowExpr", "A_ArrayExpr", "A_Indirection", "A_Indices", "SQLValueFunction",
        "GroupingSet",
    }
)
#: Fields that make a SELECT write or lock: SELECT INTO, FOR UPDATE/SHARE.
_IMPURE_FIELDS: Final = frozenset({"intoClause", "lockingClause"})
#: Name lists (operators, types) that must resolve to the system catalog: a qualified name
#: outside ``pg_catalog`` could be an operator or type whose functions the agent chose.
_NAME_FIELDS: Final = frozenset({"name", "useOp", "names"})


def side_effect_free(statement: Any) -> bool:
    """True only when the statement (a ``{"SelectStmt": ...}`` / ``{"VariableShowStmt": ...}``
    node) provably changes nothing when run: a plain SELECT (VALUES, TABLE) or SHOW that
    names no function at all (aggregates included), no locking clause, no SELECT INTO, no
    data-modifying CTE, no TABLESAMPLE method, and no operator or type outside
    ``pg_catalog`` by a qualified name.  What the database adds on its own (the group's
    masking views and row filters, a column type's output function) is the database's, not
    the agent's.  Iterative: an adversarial nesting cannot exhaust the stack.
    """
    return _only_nodes(statement, _PURE_NODES)


#: Transaction control that changes nothing by itself.
_NO_EFFECT_TRANSACTION: Final = frozenset(
    {"TRANS_STMT_BEGIN", "TRANS_STMT_START", "TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE",
     "TRANS_STMT_ROLLBACK_TO"})
#: Statements whose writes stay inside the open transaction, and the nodes they may hold
#: besides those of a side-effect-free read.
_DML_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_TRANSACTION_NODES: Final = _PURE_NODES | _DML_NODES | frozenset(
    {"OnConflictClause", "InferClause", "IndexElem", "MultiAssignRef", "SetToDefault",
     "MergeWhenClause", "FuncCall"})
def effect_scope(node: str, body: JsonNode, statement: Any) -> Scope:
    """How far the statement's effects can reach, proven from its parse tree, never guessed
    (anything not shown to be narrower is ``any``).  Why it matters: the proxy may send a
    statement whose effects cannot outlive its transaction upstream while its record is
    being made durable, because the COMMIT that would make them last waits for every
    record before it (see :mod:`policyc.proxy.session`)."""
    if node == "TransactionStmt":
        kind = body.get("kind")
        if kind in _NO_EFFECT_TRANSACTION:
            return "none"
        if kind == "TRANS_STMT_COMMIT":
            return "commit"
        return "rollback" if kind == "TRANS_STMT_ROLLBACK" else "any"
    if (node in _DML_NODES or node == "SelectStmt") and \
            _only_nodes(statement, _TRANSACTION_NODES):
        return "transaction"
    return "any"


def _only_nodes(statement: Any, allowed: frozenset[str]) -> bool:
    """The tree holds only ``allowed`` node types, no SELECT INTO or locking clause, no
    operator or type outside pg_catalog by a qualified name, and (when ``FuncCall`` is
    allowed) only transaction-safe functions (``registry/function_rules.tsv``).  Iterative:
    an adversarial nesting cannot exhaust the stack."""
    stack: list[Any] = [statement]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key[:1].isupper():
                if key not in allowed:
                    return False
                if key == "FuncCall" and not _safe_function(value):
                    return False
            elif key in _IMPURE_FIELDS:
                return False
            elif key in _NAME_FIELDS and isinstance(value, list) and len(value) > 1:
                qualified = names(value)
                if len(qualified) != len(value) or qualified[0] != "pg_catalog":
                    return False
            if isinstance(value, dict | list):
                stack.append(value)
    return True


def _safe_function(call: Any) -> bool:
    if not isinstance(call, dict):
        return False
    written = call.get("funcname")
    parts = names(written)
    if not parts or not isinstance(written, list) or len(parts) != len(written):
        return False
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "pg_catalog"):
        return False
    return parts[-1] in TRANSACTION_SAFE


_SCOPE_ORDER: Final[dict[str, int]] = {
    "none": 0, "rollback": 1, "transaction": 2, "commit": 3, "any": 4}


def combined_scope(scopes: list[Scope]) -> Scope:
    """The scope of statements run one after another: the widest of them, except that a
    ROLLBACK or a COMMIT mixed with anything that changes something (before it, or after it
    where it would run in autocommit) makes the whole ``any``: one string is one unit of
    overlap, and a COMMIT may only overlap when every record before it is durable."""
    widest: Scope = "none"
    for scope in scopes:
        if _SCOPE_ORDER[scope] > _SCOPE_ORDER[widest]:
            widest = scope
    ends = {"rollback", "commit"} & set(scopes)
    if ends and (len(ends) > 1 or set(scopes) - ends - {"none"}):
        return "any"
    return widest
