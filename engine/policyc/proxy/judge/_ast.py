"""Small readers over pglast's JSON parse tree (``parse_sql_json``), used by the classifier.

The tree is plain ``dict``/``list`` data: a generic node is a one-key dict ``{"Type": {...}}``,
typed fields (``relation``, ``alias``, ``into``...) are bare dicts, and zero values (``false``,
``0``, ``""``) are omitted.  Everything here is pure and bounded: recursion depth is capped so
an adversarial expression cannot exhaust the stack, and unknown shapes answer "don't know".
"""

from __future__ import annotations

from typing import Any, Final

JsonNode = dict[str, Any]

#: Deepest expression the constant folder looks into; beyond it the answer is "unknown".
FOLD_DEPTH: Final = 64

_TRUE_WORDS: Final = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})
_COMPARISONS: Final = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})


def names(items: Any) -> list[str]:
    """The ``sval`` of each ``String`` node in a name list (``funcname``, ``names``...)."""
    out: list[str] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                string = item.get("String")
                if isinstance(string, dict):
                    out.append(str(string.get("sval", "")))
    return out


def unwrap(node: Any) -> tuple[str, JsonNode] | None:
    """``{"Type": {...}}`` → ``("Type", {...})``; anything else → None."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if isinstance(value, dict):
            return key, value
    return None


def const_value(node: Any) -> bool | int | float | str | None:
    """The Python value of an ``A_Const`` (optionally cast to bool/int/text), else None.

    SQL NULL and anything that is not a literal both answer None: callers treat None as
    "not a known constant".
    """
    unwrapped = unwrap(node)
    if unwrapped is None:
        return None
    kind, body = unwrapped
    if kind == "TypeCast":
        inner = const_value(body.get("arg"))
        type_name = names(body.get("typeName", {}).get("names"))
        if inner is None or not type_name:
            return None
        target = type_name[-1].lower()
        if target in {"bool", "boolean"}:
            return _as_bool(inner)
        return inner if target in {"int2", "int4", "int8", "text", "varchar", "numeric"} else None
    if kind != "A_Const" or body.get("isnull"):
        return None
    if "boolval" in body:
        return bool(body["boolval"].get("boolval", False))
    if "ival" in body:
        return int(body["ival"].get("ival", 0))
    if "fval" in body:
        try:
            return float(body["fval"].get("fval", "0"))
        except ValueError:
            return None
    if "sval" in body:
        return str(body["sval"].get("sval", ""))
    return None


def _as_bool(value: bool | int | float | str) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def const_truth(node: Any, depth: int = 0) -> bool | None:
    """Fold a WHERE/ON expression: True or False when it is constant, None when unknown.

    Reasonable, not complete: literals, casts to boolean, comparisons of two literals or of a
    column with itself (``x = x``), IN lists of literals, IS [NOT] NULL / IS [NOT] TRUE of
    literals, and AND / OR / NOT over those.
    """
    if depth > FOLD_DEPTH:
        return None
    unwrapped = unwrap(node)
    if unwrapped is None:
        return None
    kind, body = unwrapped
    if kind in {"A_Const", "TypeCast"}:
        value = const_value(node)
        return None if value is None else _as_bool(value)
    if kind == "BoolExpr":
        return _fold_bool(body, depth)
    if kind == "A_Expr":
        return _fold_a_expr(body)
    if kind == "NullTest":
        arg = body.get("arg")
        is_null = _is_null_literal(arg)
        if is_null is None:
            return None
        wants_null = body.get("nulltesttype") == "IS_NULL"
        return is_null == wants_null
    if kind == "BooleanTest":
        inner = const_truth(body.get("arg"), depth + 1)
        if inner is None:
            return None
        test = body.get("booltesttype", "")
        outcomes: dict[str, bool] = {
            "IS_TRUE": inner,
            "IS_NOT_FALSE": inner,
            "IS_FALSE": not inner,
            "IS_NOT_TRUE": not inner,
        }
        return outcomes.get(test)
    return None


def _is_null_literal(node: Any) -> bool | None:
    unwrapped = unwrap(node)
    if unwrapped is None or unwrapped[0] != "A_Const":
        return None
    return bool(unwrapped[1].get("isnull", False))


def _fold_bool(body: JsonNode, depth: int) -> bool | None:
    args = body.get("args", [])
    values = [const_truth(arg, depth + 1) for arg in args]
    op = body.get("boolop")
    if op == "NOT_EXPR":
        return None if not values or values[0] is None else not values[0]
    if op == "OR_EXPR":
        if True in values:
            return True
        return False if values and all(v is False for v in values) else None
    if op == "AND_EXPR":
        if False in values:
            return False
        return True if values and all(v is True for v in values) else None
    return None


def _fold_a_expr(body: JsonNode) -> bool | None:
    kind = str(body.get("kind", ""))
    op_names = names(body.get("name"))
    op = op_names[-1] if op_names else ""
    left, right = body.get("lexpr"), body.get("rexpr")
    if kind in {"AEXPR_NOT_DISTINCT", "AEXPR_DISTINCT"} and _same_column(left, right):
        return kind == "AEXPR_NOT_DISTINCT"
    if kind == "AEXPR_OP" and op in _COMPARISONS:
        if _same_column(left, right):
            return op in {"=", "<=", ">="}
        return _compare(const_value(left), op, const_value(right))
    if kind == "AEXPR_IN":
        needle = const_value(left)
        unwrapped = unwrap(right)
        if needle is None or unwrapped is None or unwrapped[0] != "List":
            return None
        items = [const_value(item) for item in unwrapped[1].get("items", [])]
        if any(item is None for item in items):
            return None
        found = any(_compare(needle, "=", item) for item in items)
        return found if op == "=" else not found
    return None


def _same_column(left: Any, right: Any) -> bool:
    a, b = unwrap(left), unwrap(right)
    if a is None or b is None or a[0] != "ColumnRef" or b[0] != "ColumnRef":
        return False
    return bool(names(a[1].get("fields"))) and a[1].get("fields") == b[1].get("fields")


def _compare(
    left: bool | int | float | str | None, op: str, right: bool | int | float | str | None
) -> bool | None:
    """Compare two literals of the same family (numbers or strings); otherwise unknown."""
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        a: Any = float(left)
        b: Any = float(right)
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right
    else:
        return None
    results = {"=": a == b, "<>": a != b, "!=": a != b, "<": a < b, ">": a > b}
    results.update({"<=": a <= b, ">=": a >= b})
    return bool(results[op]) if op in results else None


def option_enabled(defelem: Any) -> bool:
    """Whether an EXPLAIN-style boolean option is on, failing closed (unknown → on).

    Mirrors PostgreSQL's ``defGetBoolean``: no argument means true; 0/1 and the usual words.
    """
    arg = defelem.get("arg") if isinstance(defelem, dict) else None
    if arg is None:
        return True
    unwrapped = unwrap(arg)
    if unwrapped is None:
        return True
    kind, body = unwrapped
    if kind == "Integer":
        return int(body.get("ival", 0)) != 0
    if kind == "Boolean":
        return bool(body.get("boolval", False))
    if kind == "String":
        word = str(body.get("sval", "")).lower()
        return word not in {"false", "off", "no", "0"}
    return True
