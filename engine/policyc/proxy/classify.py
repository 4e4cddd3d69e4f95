"""Per-statement classification of agent SQL: kind, tables, columns, functions, risky shapes.

Pure and fast: one call of pglast's C parser (``parse_sql_json``, ~20x cheaper than building
pglast's Python AST with ``parse_sql``) and one iterative walk of the JSON tree; no I/O, no
policy knowledge (that is :mod:`policyc.proxy.verdict`).  It fails closed: SQL that cannot be
parsed, is too long, nests too deep, or has a shape the walker does not understand yields a
:class:`Classification` with ``error`` set and no statements, never an exception.

Tables are kept as written: an unqualified name is a :class:`TableName` whose schema is
:data:`UNQUALIFIED` (``""``), because the agent's ``search_path`` is its group's view schema
and only the verdict knows which base table that name stands for.  Column references whose
qualifier cannot be tied to a table of the statement use :data:`ANY_TABLE`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from pglast import parser as pg_parser

from policyc.policy.model import TableName
from policyc.proxy._ast import JsonNode, const_truth, const_value, names, option_enabled, unwrap

StatementKind = Literal[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy_in",
    "copy_out",
    "ddl",
    "truncate",
    "set",
    "show",
    "reset",
    "transaction",
    "prepare",
    "execute",
    "deallocate",
    "declare_cursor",
    "fetch",
    "close_cursor",
    "explain",
    "do",
    "call",
    "listen",
    "notify",
    "lock",
    "vacuum",
    "discard",
    "role",
    "other",
]

#: How far a statement's effects can reach (see :func:`effect_scope`): ``none`` (a
#: side-effect-free read, BEGIN, SAVEPOINT ...), ``rollback`` (ROLLBACK/ABORT: undoes, and
#: ends the transaction block), ``transaction`` (changes data only inside the open
#: transaction: nothing of it outlives a rollback), ``commit`` (COMMIT/END: makes what the
#: transaction did last, and does nothing else) and ``any``.
Scope = Literal["none", "rollback", "transaction", "commit", "any"]

#: Risky shapes a classification may carry (a superset of the policy's approvable shapes).
RISKY: Final = frozenset(
    {
        "copy_out",
        "copy_in",
        "copy_program",
        "delete_all",
        "update_all",
        "ddl",
        "truncate",
        "explain_analyze_write",
        "write_in_cte",
        "do_block",
        "set_config",
        "role_change",
        "file_access",
        "large_object",
        "dblink",
        "dynamic_sql",
        "prepare_transaction",
        "lock",
        "sleep",
        "system_admin",
        "run_by_name",
    }
)

#: Schema of a table name written without one (resolved later through the group's views).
UNQUALIFIED: Final = ""
WrittenTableName = TableName
"""A table name as the agent wrote it: ``schema`` is :data:`UNQUALIFIED` when none was written.

Not yet a policy table: :func:`policyc.proxy.verdict.resolve_tables` maps it to base tables.
"""
#: Stand-in table for a column whose qualifier is absent or names no table of the statement.
ANY_TABLE: Final = TableName("", "")
#: A SET value that is not a literal (``SET x FROM CURRENT``, an expression).
NOT_CONSTANT: Final = "\x00not a constant"
#: Default ceiling on statement text, in UTF-8 bytes.
MAX_LENGTH: Final = 1_000_000

ColumnUse = tuple[WrittenTableName, str]
"""``(table, column)``; table may be :data:`ANY_TABLE`, column may be ``"*"``."""


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What one statement is and touches.  Holds no policy decision.

    ``setting`` is the lower-cased GUC of SET/RESET/SHOW (``"transaction"``,
    ``"session characteristics"``, ``"constraints"`` for the multi-forms, ``"all"`` for
    RESET ALL / SHOW ALL); ``name`` is the prepared statement or cursor name of
    PREPARE/EXECUTE/DEALLOCATE/DECLARE/FETCH/CLOSE.  ``side_effect_free`` is proven, never
    guessed: see :func:`side_effect_free`.
    """

    kind: StatementKind
    text: str
    tables: frozenset[WrittenTableName] = frozenset()
    columns: frozenset[ColumnUse] = frozenset()
    risky: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    ctes: frozenset[str] = frozenset()
    setting: str | None = None
    name: str | None = None
    side_effect_free: bool = False
    scope: Scope = "any"
    # what SET/RESET gives the setting: the constant value as text (several for a list),
    # None for RESET / DEFAULT, or NOT_CONSTANT; empty for anything but SET/RESET
    values: tuple[str | None, ...] = ()
    holdable: bool = False  # DECLARE ... WITH HOLD: the cursor outlives its transaction
    # every function the statement calls, as written: (schema or "", name as the parser
    # gives it: unquoted names folded to lower case, quoted ones exact)
    calls: frozenset[tuple[str, str]] = frozenset()
    # schemas of operators written qualified (``OPERATOR(s.op)``)
    operator_schemas: frozenset[str] = frozenset()
    # every set_config(name, value, ...) call: (lower-cased setting, the value's text; None
    # for NULL, which resets; NOT_CONSTANT when not a literal), judged like SET
    config_calls: tuple[tuple[str, str | None], ...] = ()
    # relations the statement writes, as written (INSERT, UPDATE, DELETE, MERGE, COPY FROM;
    # data-modifying CTEs included)
    targets: frozenset[WrittenTableName] = frozenset()

    @property
    def tables_without_ctes(self) -> frozenset[TableName]:
        """Tables excluding unqualified references that name a CTE of the statement."""
        return frozenset(
            t for t in self.tables if not (t.schema == UNQUALIFIED and t.name in self.ctes)
        )


@dataclass(frozen=True)
class Classification:
    """The statements of one SQL string, or why it could not be classified.

    ``error_sqlstate`` is what a client should receive when ``error`` is set: 42601 (syntax),
    54000 (too long / NUL byte), 54001 (too complex), XX000 (classifier fault).
    """

    statements: tuple[StatementInfo, ...] = ()
    error: str | None = None
    error_sqlstate: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def risky(self) -> frozenset[str]:
        """Union of every statement's risky shapes."""
        out: frozenset[str] = frozenset()
        for info in self.statements:
            out |= info.risky
        return out


# --------------------------------------------------------------------------- kinds

_SIMPLE_KINDS: Final[dict[str, StatementKind]] = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "TruncateStmt": "truncate",
    "TransactionStmt": "transaction",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "DeclareCursorStmt": "declare_cursor",
    "FetchStmt": "fetch",
    "ClosePortalStmt": "close_cursor",
    "ExplainStmt": "explain",
    "DoStmt": "do",
    "CallStmt": "call",
    "ListenStmt": "listen",
    "UnlistenStmt": "listen",
    "NotifyStmt": "notify",
    "LockStmt": "lock",
    "VacuumStmt": "vacuum",
    "DiscardStmt": "discard",
    "VariableShowStmt": "show",
    "ConstraintsSetStmt": "set",
}

_DDL_NODES: Final = frozenset(
    {
        "CreateTableAsStmt",
        "GrantStmt",
        "GrantRoleStmt",
        "CommentStmt",
        "SecLabelStmt",
        "RenameStmt",
        "IndexStmt",
        "ViewStmt",
        "RuleStmt",
        "DefineStmt",
        "CompositeTypeStmt",
        "RefreshMatViewStmt",
        "ReindexStmt",
        "ClusterStmt",
        "ReassignOwnedStmt",
        "ImportForeignSchemaStmt",
    }
)
_NOT_DDL: Final = frozenset({"AlterSystemStmt"})
_ROLE_DDL: Final = frozenset(
    {"CreateRoleStmt", "AlterRoleStmt", "AlterRoleSetStmt", "DropRoleStmt", "GrantRoleStmt"}
)
_FOREIGN_DDL: Final = frozenset(
    {
        "CreateFdwStmt",
        "AlterFdwStmt",
        "CreateForeignServerStmt",
        "AlterForeignServerStmt",
        "CreateUserMappingStmt",
        "AlterUserMappingStmt",
        "ImportForeignSchemaStmt",
        "CreateForeignTableStmt",
    }
)
_EXTENSION_RISK: Final = {
    "dblink": "dblink",
    "postgres_fdw": "dblink",
    "file_fdw": "file_access",
    "adminpack": "file_access",
    "lo": "large_object",
}
_SYSTEM_NODES: Final = frozenset({"AlterSystemStmt", "LoadStmt", "CheckPointStmt"})
_WRITE_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_ROLE_SETTINGS: Final = frozenset({"role", "session_authorization"})
_TWO_PHASE: Final = frozenset(
    {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
)
_CURSOR_HOLD: Final = 0x0020  # CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h
# Shapes that only matter if the statement runs; EXPLAIN without ANALYZE runs nothing.
_EXECUTION_SHAPES: Final = frozenset({"delete_all", "update_all", "write_in_cte", "ddl"})


def _is_ddl(node: str) -> bool:
    if node in _NOT_DDL:
        return False
    return node in _DDL_NODES or node.startswith(("Create", "Alter", "Drop"))


# --------------------------------------------------------------------------- functions

_FUNCTION_RISKS: Final[dict[str, frozenset[str]]] = {
    "pg_read_file": frozenset({"file_access"}),
    "pg_read_binary_file": frozenset({"file_access"}),
    "pg_stat_file": frozenset({"file_access"}),
    "pg_logdir_ls": frozenset({"file_access"}),
    "lo_import": frozenset({"file_access", "large_object"}),
    "lo_export": frozenset({"file_access", "large_object"}),
    "loread": frozenset({"large_object"}),
    "lowrite": frozenset({"large_object"}),
    "pg_terminate_backend": frozenset({"system_admin"}),
    "pg_cancel_backend": frozenset({"system_admin"}),
    "pg_reload_conf": frozenset({"system_admin"}),
    "pg_rotate_logfile": frozenset({"system_admin"}),
    "pg_promote": frozenset({"system_admin"}),
    "pg_switch_wal": frozenset({"system_admin"}),
    "pg_create_restore_point": frozenset({"system_admin"}),
    "pg_backup_start": frozenset({"system_admin"}),
    "pg_backup_stop": frozenset({"system_admin"}),
    "pg_start_backup": frozenset({"system_admin"}),
    "pg_stop_backup": frozenset({"system_admin"}),
    "pg_wal_replay_pause": frozenset({"system_admin"}),
    "pg_wal_replay_resume": frozenset({"system_admin"}),
    "pg_log_backend_memory_contexts": frozenset({"system_admin"}),
    "pg_drop_replication_slot": frozenset({"system_admin"}),
    "pg_copy_physical_replication_slot": frozenset({"system_admin"}),
    "pg_copy_logical_replication_slot": frozenset({"system_admin"}),
    "pg_logical_emit_message": frozenset({"system_admin"}),
    "query_to_xml": frozenset({"dynamic_sql"}),
    "query_to_xmlschema": frozenset({"dynamic_sql"}),
    "query_to_xml_and_xmlschema": frozenset({"dynamic_sql"}),
    "cursor_to_xml": frozenset({"dynamic_sql"}),
    "cursor_to_xmlschema": frozenset({"dynamic_sql"}),
    "table_to_xml": frozenset({"dynamic_sql"}),
    "table_to_xmlschema": frozenset({"dynamic_sql"}),
    "table_to_xml_and_xmlschema": frozenset({"dynamic_sql"}),
    "schema_to_xml": frozenset({"dynamic_sql"}),
    "schema_to_xmlschema": frozenset({"dynamic_sql"}),
    "schema_to_xml_and_xmlschema": frozenset({"dynamic_sql"}),
    "database_to_xml": frozenset({"dynamic_sql"}),
    "database_to_xmlschema": frozenset({"dynamic_sql"}),
    "database_to_xml_and_xmlschema": frozenset({"dynamic_sql"}),
}
_FUNCTION_PREFIX_RISKS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    ("lo_", frozenset({"large_object"})),
    ("dblink", frozenset({"dblink"})),
    ("postgres_fdw", frozenset({"dblink"})),
    ("pg_sleep", frozenset({"sleep"})),
    ("pg_ls_", frozenset({"file_access"})),
    ("pg_file_", frozenset({"file_access"})),
    ("pg_read_", frozenset({"file_access"})),
    ("pg_stat_reset", frozenset({"system_admin"})),
    ("pg_replication_origin_", frozenset({"system_admin"})),
    ("pg_create_", frozenset({"system_admin"})),  # replication slots, restore points
)


def function_risks(name: str) -> frozenset[str]:
    """Risky shapes of calling a function, by its last name part, case-insensitively."""
    found = _FUNCTION_RISKS.get(name)
    if found is not None:
        return found
    for prefix, risks in _FUNCTION_PREFIX_RISKS:
        if name.startswith(prefix):
            if prefix == "pg_create_" and not name.endswith(("_slot", "_point")):
                continue
            return risks
    return frozenset()


# --------------------------------------------------------------------------- the walk


class _Collector:
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
                self.risky.add("set_config")
            return
        setting = first.lower()
        if setting in _ROLE_SETTINGS:
            self.risky.add("role_change")
        elif setting.startswith("policyc."):
            self.risky.add("set_config")
        self.config_calls.append((setting, value))


    def column_ref(self, node: JsonNode) -> None:
        self.column_refs.append(node.get("fields", []))

    def cte(self, node: JsonNode) -> None:
        self.ctes.add(str(node.get("ctename", "")))
        query = unwrap(node.get("ctequery"))
        if query is not None and query[0] in _WRITE_NODES:
            self.risky.add("write_in_cte")

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
            self.risky.add("delete_all")

    def update(self, node: JsonNode) -> None:
        self.target(node)
        if _covers_all(node):
            self.risky.add("update_all")

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
                    self.risky.add("delete_all")
                elif command == "CMD_UPDATE" and match != "MERGE_WHEN_NOT_MATCHED":
                    self.risky.add("update_all")

    def select(self, node: JsonNode) -> None:
        if "intoClause" in node:
            self.risky.add("ddl")

    def create_table_as(self, node: JsonNode) -> None:
        self.risky.add("ddl")


def _covers_all(node: JsonNode) -> bool:
    """A DELETE/UPDATE hits every row when its WHERE is absent or constant true."""
    where = node.get("whereClause")
    return where is None or const_truth(where) is True


_HANDLERS: Final[dict[str, Callable[[_Collector, JsonNode], None]]] = {
    "ColumnRef": _Collector.column_ref,
    "CommonTableExpr": _Collector.cte,
    "InsertStmt": _Collector.insert,
    "DeleteStmt": _Collector.delete,
    "UpdateStmt": _Collector.update,
    "MergeStmt": _Collector.merge,
    "SelectStmt": _Collector.select,
    "CreateTableAsStmt": _Collector.create_table_as,
    "ExecuteStmt": _Collector.execute,
    "A_Expr": _Collector.operator,
}
_RAW_STMT_KEYS: Final = frozenset({"stmt", "stmt_location", "stmt_len"})
_FIELD_KEYS: Final = frozenset({"relname", "funcname", "usingClause", "stmt"})


class _Decoder:
    """Runs the collectors while ``json.loads`` builds the tree: one pass, no second walk.

    ``object_hook`` sees every JSON object bottom-up in document order, so all nodes of
    statement *i* arrive before its ``RawStmt`` wrapper, which closes that statement's
    collector and opens the next one.  The hook is the hot loop of the classifier, hence
    written flat.
    """

    def __init__(self) -> None:
        self.current = _Collector()
        self.done: list[_Collector] = []

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
            self.current = _Collector()
        return obj


def _resolve_columns(collector: _Collector) -> frozenset[ColumnUse]:
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


# --------------------------------------------------------------------------- statements


def _config_value(args: Any) -> str | None:
    """set_config's value: its literal text, None for NULL (which resets), else NOT_CONSTANT."""
    if not isinstance(args, list) or len(args) < 2:
        return NOT_CONSTANT
    second = unwrap(args[1])
    if second is not None and second[0] == "A_Const" and second[1].get("isnull"):
        return None
    literal = const_value(args[1])
    return NOT_CONSTANT if literal is None or isinstance(literal, bool) else str(literal)


def _pg_settings_name(node: str, body: JsonNode) -> str | None:
    """The setting a ``set_config(name, ...)`` names when the statement is exactly
    ``SELECT ... FROM pg_settings WHERE name = 'literal'`` (pg_dump 15.8+ sets
    restrict_nonsystem_relation_kind this way, so a server without it gets no row): the only
    row ``name`` can hold is that literal.  None for any other shape."""
    if node != "SelectStmt" or set(body) - {"targetList", "fromClause", "whereClause",
                                            "limitOption", "op"}:
        return None
    source = body.get("fromClause")
    if not isinstance(source, list) or len(source) != 1:
        return None
    table = unwrap(source[0])
    if table is None or table[0] != "RangeVar" or table[1].get("relname") != "pg_settings" \
            or table[1].get("schemaname", "pg_catalog") != "pg_catalog" or table[1].get("alias"):
        return None
    where = unwrap(body.get("whereClause"))
    if where is None or where[0] != "A_Expr" or where[1].get("kind") != "AEXPR_OP" \
            or names(where[1].get("name")) != ["="]:
        return None
    column = unwrap(where[1].get("lexpr"))
    if column is None or column[0] != "ColumnRef" or names(column[1].get("fields")) != ["name"]:
        return None
    literal = const_value(where[1].get("rexpr"))
    return literal.lower() if isinstance(literal, str) else None



def _classify_statement(wrapper: JsonNode, text: str, collector: _Collector) -> StatementInfo:
    unwrapped = unwrap(wrapper)
    if unwrapped is None:
        raise _ShapeError
    node, body = unwrapped
    kind: StatementKind = _SIMPLE_KINDS.get(node, "other")
    values: tuple[str | None, ...] = ()
    setting: str | None = None
    name: str | None = None
    risky = collector.risky

    if collector.executes > (node == "ExecuteStmt"):
        # EXPLAIN [ANALYZE] EXECUTE, CREATE TABLE AS EXECUTE: they run or plan what a name
        # holds, which their text does not show (and a judge could not see)
        risky.add("run_by_name")
    if node == "SelectStmt":
        kind = "ddl" if "intoClause" in body else "select"
    elif node == "CopyStmt":
        kind = _copy(body, collector)
    elif node == "VariableSetStmt":
        kind, setting = _variable_set(body, risky)
        values = _set_values(body)
    elif node == "VariableShowStmt":
        setting = str(body.get("name", "")).lower()
    elif node == "ConstraintsSetStmt":
        setting = "constraints"
    elif node == "TransactionStmt":
        if body.get("kind") in _TWO_PHASE:
            risky.add("prepare_transaction")
    elif node == "ExplainStmt":
        _explain(body, risky)
    elif node == "DoStmt":
        risky.add("do_block")
    elif node == "LockStmt":
        risky.add("lock")
    elif node == "TruncateStmt":
        risky.add("truncate")
    elif node in _SYSTEM_NODES:
        risky.add("system_admin")
    elif _is_ddl(node):
        kind = "ddl"
        _ddl(node, body, risky)

    if node in {"PrepareStmt", "ExecuteStmt", "DeclareCursorStmt"}:
        name = str(body.get("name", body.get("portalname", "")))
    elif node in {"FetchStmt", "ClosePortalStmt"}:
        name = body.get("portalname")  # None means ALL
    elif node == "DeallocateStmt":
        name = body.get("name")  # None means ALL
    elif node == "DiscardStmt" and body.get("target") == "DISCARD_ALL":
        name = "all"
    elif node in {"ListenStmt", "NotifyStmt", "UnlistenStmt"}:
        name = body.get("conditionname")  # the channel; None means UNLISTEN *

    if collector.settings_by_row:
        bound = _pg_settings_name(node, body)
        if bound is None or bound in _ROLE_SETTINGS or bound.startswith("policyc."):
            risky.add("set_config")
        else:
            collector.config_calls.extend((bound, value) for value in collector.settings_by_row)
    pure = kind in ("select", "show") and side_effect_free(wrapper)
    return StatementInfo(
        kind=kind,
        side_effect_free=pure,
        scope="none" if pure else effect_scope(node, body, wrapper),
        text=text,
        tables=frozenset(collector.tables),
        columns=_resolve_columns(collector),
        risky=frozenset(risky),
        functions=frozenset(collector.functions),
        ctes=frozenset(collector.ctes),
        setting=setting,
        name=name,
        values=values,
        holdable=node == "DeclareCursorStmt" and bool(int(body.get("options", 0)) & _CURSOR_HOLD),
        calls=frozenset(collector.calls),
        operator_schemas=frozenset(collector.operator_schemas),
        config_calls=tuple(collector.config_calls),
        targets=frozenset(collector.targets),
    )


# --------------------------------------------------------------------------- side effects

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
#: pg_catalog functions that compute from their arguments, the clock or the transaction
#: and act on nothing: calling them inside an open transaction changes nothing outside it.
#: An allow-list (agents cannot change ``search_path`` nor create functions, so an
#: unqualified name is pg_catalog's).
_TRANSACTION_SAFE_FUNCTIONS: Final = frozenset(
    {
        "now", "statement_timestamp", "transaction_timestamp", "clock_timestamp", "timezone",
        "date_trunc", "date_part", "extract", "make_date", "make_time", "make_timestamp",
        "make_timestamptz", "make_interval", "age", "to_char", "to_date", "to_timestamp",
        "to_number", "lower", "upper", "initcap", "length", "char_length", "octet_length",
        "substr", "substring", "position", "strpos", "replace", "btrim", "ltrim", "rtrim",
        "concat", "concat_ws", "left", "right", "lpad", "rpad", "split_part", "overlay",
        "md5", "abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "power", "sqrt",
        "random", "gen_random_uuid", "jsonb_build_object", "json_build_object",
        "jsonb_build_array", "json_build_array", "to_jsonb", "to_json", "array_length",
        "cardinality", "count", "sum", "min", "max", "avg",
    }
)


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
    allowed) only functions of :data:`_TRANSACTION_SAFE_FUNCTIONS`.  Iterative: an
    adversarial nesting cannot exhaust the stack."""
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
    return parts[-1] in _TRANSACTION_SAFE_FUNCTIONS


def _copy(body: JsonNode, collector: _Collector) -> StatementKind:
    risky = collector.risky
    is_from = bool(body.get("is_from", False))
    kind: StatementKind = "copy_in" if is_from else "copy_out"
    risky.add(kind)
    if body.get("is_program"):
        risky.add("copy_program")
    elif body.get("filename") is not None:
        risky.add("file_access")
    relation = body.get("relation")
    if is_from:
        collector.target(body)
    if not is_from and isinstance(relation, dict) and "relname" in relation:
        table = TableName(str(relation.get("schemaname", UNQUALIFIED)), str(relation["relname"]))
        columns = names(body.get("attlist")) or ["*"]
        collector.direct_columns.update((table, column) for column in columns)
    return kind


def _variable_set(body: JsonNode, risky: set[str]) -> tuple[StatementKind, str]:
    set_kind = body.get("kind", "")
    setting = str(body.get("name", "")).lower()
    kind: StatementKind = "reset" if set_kind in {"VAR_RESET", "VAR_RESET_ALL"} else "set"
    if set_kind == "VAR_RESET_ALL":
        # the session user is the group role: RESET ALL returns every setting to the
        # group role's and the proxy's startup values (see policyc.proxy.verdict.PINNED)
        return kind, "all"
    if setting in _ROLE_SETTINGS:
        risky.update({"role_change", "set_config"})
        return "role", setting
    if setting.startswith("policyc."):
        risky.add("set_config")
    return kind, setting


def _set_values(body: JsonNode) -> tuple[str | None, ...]:
    """The values a SET gives: text of each literal; ``(None,)`` for RESET / DEFAULT."""
    set_kind = body.get("kind", "")
    if set_kind in {"VAR_RESET", "VAR_SET_DEFAULT", "VAR_RESET_ALL"}:
        return (None,)
    if set_kind != "VAR_SET_VALUE":
        return (NOT_CONSTANT,)
    out: list[str | None] = []
    for arg in body.get("args") or []:
        value = const_value(arg)
        if value is None or isinstance(value, bool):
            out.append(NOT_CONSTANT)
        else:
            out.append(str(value))
    return tuple(out) or (NOT_CONSTANT,)


def _explain(body: JsonNode, risky: set[str]) -> None:
    analyze = any(
        isinstance(opt, dict)
        and isinstance(opt.get("DefElem"), dict)
        and str(opt["DefElem"].get("defname", "")).lower() == "analyze"
        and option_enabled(opt["DefElem"])
        for opt in body.get("options", [])
    )
    if not analyze:
        risky.difference_update(_EXECUTION_SHAPES)
        return
    query = unwrap(body.get("query"))
    writes = query is not None and query[0] in _WRITE_NODES
    if writes or risky & _EXECUTION_SHAPES:
        risky.add("explain_analyze_write")


def _ddl(node: str, body: JsonNode, risky: set[str]) -> None:
    risky.add("ddl")
    if node in _ROLE_DDL:
        risky.add("role_change")
    if node in _FOREIGN_DDL:
        risky.add("dblink")
    if node == "CreateExtensionStmt":
        extension_risk = _EXTENSION_RISK.get(str(body.get("extname", "")).lower())
        if extension_risk:
            risky.add(extension_risk)


class _ShapeError(Exception):
    """The parse tree has a shape the classifier does not know."""


# --------------------------------------------------------------------------- entry points

_NEAR = re.compile(r'at or near "(.*)"', re.DOTALL)
_SAFE_TOKEN = re.compile(r"^(?:[A-Za-z_][A-Za-z_0-9$]*|[^\w\s'\"$]{1,3})$")


def _parse_error_message(exc: pg_parser.ParseError) -> str:
    """pglast's message without any literal it quotes; position as a 0-based character index."""
    message = str(exc.args[0]) if exc.args else "syntax error"

    def redact(match: re.Match[str]) -> str:
        token = match.group(1)
        return match.group(0) if _SAFE_TOKEN.match(token) else "at or near a literal"

    message = _NEAR.sub(redact, message)
    position = exc.args[1] if len(exc.args) > 1 else None
    where = f" at character {position}" if isinstance(position, int) else ""
    return f"could not parse SQL: {message}{where}"


def classify(sql: str, *, max_length: int = MAX_LENGTH) -> Classification:
    """Classify every statement of ``sql``; never raises for any input string."""
    size = len(sql)
    if size > max_length or (not sql.isascii() and size * 4 > max_length):
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > max_length:
            return Classification(
                error=f"statement of {size} bytes exceeds the limit of {max_length}",
                error_sqlstate="54000",
            )
    if "\x00" in sql:
        return Classification(error="statement contains a NUL character", error_sqlstate="54000")
    decoder = _Decoder()
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql), object_hook=decoder.hook)
    except pg_parser.ParseError as exc:
        message = _parse_error_message(exc)
        sqlstate = "54001" if "stack depth" in message or "memory exhausted" in message else "42601"
        return Classification(error=message, error_sqlstate=sqlstate)
    except RecursionError:
        return Classification(
            error="statement nests too deeply to classify", error_sqlstate="54001"
        )
    try:
        return Classification(statements=_statements(sql, tree, decoder.done))
    except (_ShapeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Classification(
            error=f"internal classifier error ({type(exc).__name__}); statement refused",
            error_sqlstate="XX000",
        )


def _statements(
    sql: str, tree: JsonNode, collectors: list[_Collector]
) -> tuple[StatementInfo, ...]:
    raw = tree.get("stmts", [])
    if not raw:
        return ()
    if len(collectors) != len(raw):
        raise _ShapeError
    ascii_only = sql.isascii()
    data = sql if ascii_only else sql.encode("utf-8", "surrogatepass")
    out: list[StatementInfo] = []
    for entry, collector in zip(raw, collectors, strict=True):
        start = int(entry.get("stmt_location", 0))
        length = int(entry.get("stmt_len", 0))
        chunk = data[start : start + length] if length else data[start:]
        text = chunk if isinstance(chunk, str) else chunk.decode("utf-8", "surrogatepass")
        out.append(_classify_statement(entry["stmt"], text.strip(), collector))
    return tuple(out)


def fingerprint(sql: str) -> str:
    """pglast's query fingerprint (same shape, different literals → same value).

    Unparseable text gets ``"text:"`` + a SHA-256 prefix of the exact text, so every audited
    statement has a stable key.
    """
    try:
        return str(pg_parser.fingerprint(sql))
    except pg_parser.ParseError:
        return "text:" + hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def normalize(sql: str) -> str | None:
    """The statement with literals replaced by ``$n`` (safe to log), or None if unparseable."""
    try:
        return str(pg_parser.normalize(sql))
    except pg_parser.ParseError:
        return None


class ClassifierCache:
    """Bounded LRU of classifications keyed by exact SQL text.

    Not thread-safe (one per asyncio loop).  Texts longer than ``max_key_length`` characters
    are classified every time rather than pinned in memory.
    """

    def __init__(
        self,
        maxsize: int = 10_000,
        *,
        max_length: int = MAX_LENGTH,
        max_key_length: int = 16_384,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.max_length = max_length
        self.max_key_length = max_key_length
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Classification] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def classify(self, sql: str) -> Classification:
        """Cached :func:`classify`."""
        entries = self._entries
        found = entries.get(sql)
        if found is not None:
            entries.move_to_end(sql)
            self.hits += 1
            return found
        self.misses += 1
        result = classify(sql, max_length=self.max_length)
        if len(sql) <= self.max_key_length:
            entries[sql] = result
            if len(entries) > self.maxsize:
                entries.popitem(last=False)
        return result

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0
