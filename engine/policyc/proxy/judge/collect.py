"""The walk: facts gathered from the nodes of a parse tree while ``json.loads`` builds it.

One pass and no recursion: :class:`TreeDecoder` is ``json.loads``'s ``object_hook`` and feeds
each node to the :class:`Collector` of the statement it belongs to (tables and aliases,
columns, functions and their risky shapes, writes, set_config calls).  What the facts make of
a statement is :mod:`policyc.proxy.judge.classify`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from policyc.policy.model import TableName
from policyc.proxy.judge._ast import JsonNode, const_truth, const_value, names, unwrap
from policyc.proxy.judge.registry.rules import function_risks
from policyc.proxy.judge.statement import (
    ANY_TABLE,
    NOT_CONSTANT,
    UNQUALIFIED,
    ColumnUse,
)
from policyc.vocab import Shape

#: Statements that write rows.
WRITE_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
#: Settings that change who the session is.
ROLE_SETTINGS: Final = frozenset({"role", "session_authorization"})


class Collector:
    """Facts gathered from the nodes of one statement."""

    __slots__ = (
        "aliases",
        "calls",
        "column_refs",
        "config_calls",
        "ctes",
        "direct_columns",
        "executes",
        "functions",
        "operator_schemas",
        "risky",
        "settings_by_row",
        "tables",
        "targets",
        "using",
    )

    def __init__(self) -> None:
        self.tables: set[TableName] = set()
        self.aliases: dict[str, set[TableName]] = {}
        self.column_refs: list[list[Any]] = []
        self.using: set[str] = set()
        self.risky: set[str] = set()
        self.functions: set[str] = set()
        self.ctes: set[str] = set()
        self.direct_columns: set[ColumnUse] = set()
        self.calls: set[tuple[str, str]] = set()
        self.config_calls: list[tuple[str, str | None]] = []
        self.settings_by_row: list[str | None] = []  # set_config(name, value) of pg_settings
        self.targets: set[TableName] = set()  # relations written (INSERT/UPDATE/DELETE/MERGE)
        self.executes = 0
        self.operator_schemas: set[str] = set()

    def operator(self, node: JsonNode) -> None:
        written = node.get("name")
        parts = names(written)
        if isinstance(written, list) and len(written) > 1:
            self.operator_schemas.add(parts[0] if len(parts) == len(written) else "?")

    def execute(self, node: JsonNode) -> None:
        self.executes += 1

    def range_var(self, node: JsonNode) -> None:
        table = TableName(str(node.get("schemaname", UNQUALIFIED)), str(node["relname"]))
        self.tables.add(table)
        self.aliases.setdefault(table.name, set()).add(table)
        alias = node.get("alias")
        if isinstance(alias, dict) and "aliasname" in alias:
            self.aliases.setdefault(str(alias["aliasname"]), set()).add(table)

    def function(self, node: JsonNode) -> None:
        written = node.get("funcname")
        parts = names(written)
        if not parts:
            return
        if isinstance(written, list) and len(parts) == len(written) and len(parts) <= 2:
            self.calls.add((parts[0] if len(parts) == 2 else UNQUALIFIED, parts[-1]))
        else:  # a catalog-qualified name or a shape not understood: judged as unknown
            self.calls.add((".".join(parts[:-1]) or "?", parts[-1]))
        name = parts[-1].lower()
        self.functions.add(name)
        risks = function_risks(name)
        if risks:
            self.risky.update(risks)
        if name == "set_config":
            self._set_config(node.get("args"))

    def _set_config(self, args: Any) -> None:
        """``set_config(name, value, is_local)``: judged like SET by its setting and value
        (:attr:`StatementInfo.config_calls`); a name that is not a literal could be any
        setting, the role among them."""
        first = const_value(args[0]) if isinstance(args, list) and args else None
        value = _config_value(args)
        if not isinstance(first, str):
            column = unwrap(args[0]) if isinstance(args, list) and args else None
            if column is not None and column[0] == "ColumnRef" and \
                    names(column[1].get("fields")) == ["name"]:
                self.settings_by_row.append(value)  # pg_dump's shape: see _pg_settings_name
            else:
                self.risky.add(Shape.SET_CONFIG)
            return
        setting = first.lower()
        if setting in ROLE_SETTINGS:
            self.risky.add(Shape.ROLE_CHANGE)
        elif setting.startswith("policyc."):
            self.risky.add(Shape.SET_CONFIG)
        self.config_calls.append((setting, value))


    def column_ref(self, node: JsonNode) -> None:
        self.column_refs.append(node.get("fields", []))

    def cte(self, node: JsonNode) -> None:
        self.ctes.add(str(node.get("ctename", "")))
        query = unwrap(node.get("ctequery"))
        if query is not None and query[0] in WRITE_NODES:
            self.risky.add(Shape.WRITE_IN_CTE)

    def target(self, node: JsonNode) -> None:
        relation = node.get("relation")
        if isinstance(relation, dict) and "relname" in relation:
            self.targets.add(TableName(str(relation.get("schemaname", UNQUALIFIED)),
                                       str(relation["relname"])))

    def insert(self, node: JsonNode) -> None:
        self.target(node)

    def delete(self, node: JsonNode) -> None:
        self.target(node)
        if _covers_all(node):
            self.risky.add(Shape.DELETE_ALL)

    def update(self, node: JsonNode) -> None:
        self.target(node)
        if _covers_all(node):
            self.risky.add(Shape.UPDATE_ALL)

    def merge(self, node: JsonNode) -> None:
        self.target(node)
        unconditional = const_truth(node.get("joinCondition")) is True
        for clause in node.get("mergeWhenClauses", []):
            body = unwrap(clause)
            if body is None:
                continue
            match = body[1].get("matchKind", "")
            if unconditional or match == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
                command = body[1].get("commandType")
                if command == "CMD_DELETE":
                    self.risky.add(Shape.DELETE_ALL)
                elif command == "CMD_UPDATE" and match != "MERGE_WHEN_NOT_MATCHED":
                    self.risky.add(Shape.UPDATE_ALL)

    def select(self, node: JsonNode) -> None:
        if "intoClause" in node:
            self.risky.add(Shape.DDL)

    def create_table_as(self, node: JsonNode) -> None:
        self.risky.add(Shape.DDL)


def _covers_all(node: JsonNode) -> bool:
    """A DELETE/UPDATE hits every row when its WHERE is absent or constant true."""
    where = node.get("whereClause")
    return where is None or const_truth(where) is True


_HANDLERS: Final[dict[str, Callable[[Collector, JsonNode], None]]] = {
    "ColumnRef": Collector.column_ref,
    "CommonTableExpr": Collector.cte,
    "InsertStmt": Collector.insert,
    "DeleteStmt": Collector.delete,
    "UpdateStmt": Collector.update,
    "MergeStmt": Collector.merge,
    "SelectStmt": Collector.select,
    "CreateTableAsStmt": Collector.create_table_as,
    "ExecuteStmt": Collector.execute,
    "A_Expr": Collector.operator,
}
_RAW_STMT_KEYS: Final = frozenset({"stmt", "stmt_location", "stmt_len"})
_FIELD_KEYS: Final = frozenset({"relname", "funcname", "usingClause", "stmt"})


class TreeDecoder:
    """Runs the collectors while ``json.loads`` builds the tree: one pass, no second walk.

    ``object_hook`` sees every JSON object bottom-up in document order, so all nodes of
    statement *i* arrive before its ``RawStmt`` wrapper, which closes that statement's
    collector and opens the next one.  The hook is the hot loop of the classifier, hence
    written flat.
    """

    def __init__(self) -> None:
        self.current = Collector()
        self.done: list[Collector] = []

    def hook(self, obj: JsonNode) -> JsonNode:
        if len(obj) == 1:  # a generic node wrapper {"Type": {...}}
            key = next(iter(obj))
            handler = _HANDLERS.get(key)
            if handler is not None:
                value = obj[key]
                if type(value) is dict:
                    handler(self.current, value)
            if key not in _FIELD_KEYS:
                return obj
        if "relname" in obj:
            self.current.range_var(obj)
        elif "funcname" in obj:
            self.current.function(obj)
        elif "usingClause" in obj:
            self.current.using.update(names(obj["usingClause"]))
        elif "stmt" in obj and obj.keys() <= _RAW_STMT_KEYS:
            self.done.append(self.current)
            self.current = Collector()
        return obj


def resolve_columns(collector: Collector) -> frozenset[ColumnUse]:
    """Tie each ColumnRef to the tables its qualifier can mean; unknown → ANY_TABLE."""
    out: set[ColumnUse] = set()
    aliases = collector.aliases
    for fields in collector.column_refs:
        parts: list[str] = []
        star = False
        for item in fields:
            if isinstance(item, dict) and "A_Star" in item:
                star = True
            else:
                parts.extend(names([item]))
        column = "*" if star else (parts.pop() if parts else "")
        if not column:
            continue
        if not parts:
            if column in aliases:  # whole-row reference: `select p from patients p`
                out.update((t, "*") for t in aliases[column])
            out.add((ANY_TABLE, column))
        elif len(parts) == 1:
            targets = aliases.get(parts[0])
            if targets:
                out.update((t, column) for t in targets)
            else:
                out.add((ANY_TABLE, column))
        else:
            out.add((TableName(parts[-2], parts[-1]), column))
    out.update((ANY_TABLE, name) for name in collector.using)
    out.update(collector.direct_columns)
    return frozenset(out)


def _config_value(args: Any) -> str | None:
    """set_config's value: its literal text, None for NULL (which resets), else NOT_CONSTANT."""
    if not isinstance(args, list) or len(args) < 2:
        return NOT_CONSTANT
    second = unwrap(args[1])
    if second is not None and second[0] == "A_Const" and second[1].get("isnull"):
        return None
    literal = const_value(args[1])
    return NOT_CONSTANT if literal is None or isinstance(literal, bool) else str(literal)
