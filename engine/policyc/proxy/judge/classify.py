"""Per-statement classification of agent SQL: kind, tables, columns, functions, risky shapes.

Pure and fast: one call of pglast's C parser (``parse_sql_json``, ~20x cheaper than building
pglast's Python AST with ``parse_sql``) and one iterative walk of the JSON tree
(:mod:`policyc.proxy.judge.collect`); no I/O, no policy knowledge (that is
:mod:`policyc.proxy.judge.verdict`).  It fails closed: SQL that cannot be parsed, is too long,
nests too deep, or has a shape the walker does not understand yields a
:class:`~policyc.proxy.judge.statement.Classification` with ``error`` set and no statements,
never an exception.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pglast import parser as pg_parser

from policyc.errors import (
    InternalError,
    ProgramLimitExceeded,
    SqlSyntaxError,
    StatementTooComplex,
)
from policyc.policy.model import TableName
from policyc.proxy.judge._ast import JsonNode, const_value, names, option_enabled, unwrap
from policyc.proxy.judge.collect import (
    ROLE_SETTINGS,
    WRITE_NODES,
    Collector,
    TreeDecoder,
    resolve_columns,
)
from policyc.proxy.judge.effects import effect_scope, side_effect_free
from policyc.proxy.judge.statement import (
    MAX_LENGTH,
    NOT_CONSTANT,
    UNQUALIFIED,
    Classification,
    StatementInfo,
    StatementKind,
)
from policyc.vocab import Shape

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
_EXTENSION_RISK: Final[dict[str, Shape]] = {
    "dblink": Shape.DBLINK,
    "postgres_fdw": Shape.DBLINK,
    "file_fdw": Shape.FILE_ACCESS,
    "adminpack": Shape.FILE_ACCESS,
    "lo": Shape.LARGE_OBJECT,
}
_SYSTEM_NODES: Final = frozenset({"AlterSystemStmt", "LoadStmt", "CheckPointStmt"})
_TWO_PHASE: Final = frozenset(
    {"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"}
)
_CURSOR_HOLD: Final = 0x0020  # CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h
# Shapes that only matter if the statement runs; EXPLAIN without ANALYZE runs nothing.
_EXECUTION_SHAPES: Final = frozenset(
    {Shape.DELETE_ALL, Shape.UPDATE_ALL, Shape.WRITE_IN_CTE, Shape.DDL})


def _is_ddl(node: str) -> bool:
    if node in _NOT_DDL:
        return False
    return node in _DDL_NODES or node.startswith(("Create", "Alter", "Drop"))


# --------------------------------------------------------------------------- statements


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


def _classify_statement(wrapper: JsonNode, text: str, collector: Collector) -> StatementInfo:
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
        risky.add(Shape.RUN_BY_NAME)
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
            risky.add(Shape.PREPARE_TRANSACTION)
    elif node == "ExplainStmt":
        _explain(body, risky)
    elif node == "DoStmt":
        risky.add(Shape.DO_BLOCK)
    elif node == "LockStmt":
        risky.add(Shape.LOCK)
    elif node == "TruncateStmt":
        risky.add(Shape.TRUNCATE)
    elif node in _SYSTEM_NODES:
        risky.add(Shape.SYSTEM_ADMIN)
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
        if bound is None or bound in ROLE_SETTINGS or bound.startswith("policyc."):
            risky.add(Shape.SET_CONFIG)
        else:
            collector.config_calls.extend((bound, value) for value in collector.settings_by_row)
    pure = kind in ("select", "show") and side_effect_free(wrapper)
    return StatementInfo(
        kind=kind,
        side_effect_free=pure,
        scope="none" if pure else effect_scope(node, body, wrapper),
        text=text,
        tables=frozenset(collector.tables),
        columns=resolve_columns(collector),
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


def _copy(body: JsonNode, collector: Collector) -> StatementKind:
    risky = collector.risky
    is_from = bool(body.get("is_from", False))
    kind: StatementKind = "copy_in" if is_from else "copy_out"
    risky.add(Shape.COPY_IN if is_from else Shape.COPY_OUT)
    if body.get("is_program"):
        risky.add(Shape.COPY_PROGRAM)
    elif body.get("filename") is not None:
        risky.add(Shape.FILE_ACCESS)
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
        # group role's and the proxy's startup values (see policyc.proxy.judge.settings.PINNED)
        return kind, "all"
    if setting in ROLE_SETTINGS:
        risky.update({Shape.ROLE_CHANGE, Shape.SET_CONFIG})
        return "role", setting
    if setting.startswith("policyc."):
        risky.add(Shape.SET_CONFIG)
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
    writes = query is not None and query[0] in WRITE_NODES
    if writes or risky & _EXECUTION_SHAPES:
        risky.add(Shape.EXPLAIN_ANALYZE_WRITE)


def _ddl(node: str, body: JsonNode, risky: set[str]) -> None:
    risky.add(Shape.DDL)
    if node in _ROLE_DDL:
        risky.add(Shape.ROLE_CHANGE)
    if node in _FOREIGN_DDL:
        risky.add(Shape.DBLINK)
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
                error_sqlstate=ProgramLimitExceeded.sqlstate,
            )
    if "\x00" in sql:
        return Classification(error="statement contains a NUL character",
                              error_sqlstate=ProgramLimitExceeded.sqlstate)
    decoder = TreeDecoder()
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql), object_hook=decoder.hook)
    except pg_parser.ParseError as exc:
        message = _parse_error_message(exc)
        deep = "stack depth" in message or "memory exhausted" in message
        sqlstate = StatementTooComplex.sqlstate if deep else SqlSyntaxError.sqlstate
        return Classification(error=message, error_sqlstate=sqlstate)
    except RecursionError:
        return Classification(
            error="statement nests too deeply to classify",
            error_sqlstate=StatementTooComplex.sqlstate,
        )
    try:
        return Classification(statements=_statements(sql, tree, decoder.done))
    except (_ShapeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Classification(
            error=f"internal classifier error ({type(exc).__name__}); statement refused",
            error_sqlstate=InternalError.sqlstate,
        )


def _statements(
    sql: str, tree: JsonNode, collectors: list[Collector]
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
