"""Is a row-filter expression safe to compile into a row-security policy?

A row filter (``rows: {public.patients: "clinic_id = policyc.claim('clinic_id')::int"}``) ends
up inside ``CREATE POLICY ... USING (<expr>)`` and runs for every row an agent touches, as the
agent.  So it must be exactly one boolean expression: nothing that ends it early (a ``;``, a
comment swallowing the closing parenthesis, a ``UNION`` or ``ORDER BY`` tacked on), nothing with
side effects or changing answers (volatile functions, sequences, sleeps, settings the agent can
``SET``), nothing that reads outside the filtered table's own schema.

The check is syntactic (pglast, no database): it parses ``SELECT 1 WHERE <expr>``, requires the
result to be that one statement with nothing but the WHERE clause, then walks the tree against
allowlists of node types and functions.  Anything not known to be safe is refused by name.
Unqualified operators and type names resolve in the database and are left to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, parse_sql_json, scan

from policyc.errors import Problem
from policyc.policy.model import Policy, TableName
from policyc.vocab import IDENTITY_SCHEMA, IdentityFunction

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "MAX_LENGTH",
    "POLICYC_FUNCTIONS",
    "SAFE_FUNCTIONS",
    "check_row_filter",
    "filter_mentions",
    "unfiltered_write_warnings",
]

MAX_LENGTH = 8192
"""Longest row filter accepted, in characters."""

_PREFIX = "SELECT 1 WHERE "

POLICYC_FUNCTIONS = frozenset(IdentityFunction)
"""``policyc.*`` functions a filter may call: the verified identity of the session."""

SAFE_FUNCTIONS = frozenset(
    {
        # text
        "ascii", "bit_length", "btrim", "char_length", "character_length", "chr", "concat",
        "concat_ws", "format", "initcap", "left", "length", "lower", "lpad", "ltrim", "md5",
        "normalize", "octet_length", "overlay", "position", "regexp_count", "regexp_like",
        "regexp_match", "regexp_replace", "regexp_split_to_array", "repeat", "replace",
        "reverse", "right", "rpad", "rtrim", "similar_to_escape", "split_part", "starts_with",
        "strpos", "substr", "substring", "to_hex", "translate", "trim", "upper",
        "pg_collation_for",
        # numbers
        "abs", "ceil", "ceiling", "div", "floor", "mod", "power", "round", "sign", "sqrt",
        "trunc", "num_nonnulls", "num_nulls",
        # time (stable within a statement)
        "age", "current_date", "date_bin", "date_part", "date_trunc", "extract", "isfinite",
        "justify_days", "justify_hours", "justify_interval", "localtimestamp", "make_date",
        "make_interval", "make_time", "make_timestamp", "make_timestamptz", "now",
        "statement_timestamp", "timezone", "to_char", "to_date", "to_number", "to_timestamp",
        "transaction_timestamp",
        # arrays and sets
        "array_length", "array_lower", "array_ndims", "array_position", "array_positions",
        "array_to_string", "array_upper", "cardinality", "generate_series",
        "regexp_split_to_table", "string_to_array", "string_to_table", "unnest",
        # json
        "json_extract_path_text", "jsonb_array_elements_text", "jsonb_array_length",
        "jsonb_exists", "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_object_keys",
        "jsonb_typeof",
        # roles
        "pg_has_role",
    }
)  # fmt: skip
"""Functions (unqualified or in ``pg_catalog``) known to be immutable or stable and harmless."""

AGGREGATE_FUNCTIONS = frozenset(
    {"array_agg", "avg", "bool_and", "bool_or", "count", "every", "max", "min", "string_agg", "sum"}
)
"""Aggregates allowed inside a subquery (never at the filter's own level)."""

_VOLATILE = "is volatile: a row filter must give the same answer for the same row"
_REASONS: Mapping[str, str] = {
    **dict.fromkeys(
        ("random", "random_normal", "setseed", "gen_random_uuid", "uuidv4", "uuidv7",
         "clock_timestamp", "timeofday", "txid_current", "pg_current_xact_id"),
        _VOLATILE,
    ),
    **dict.fromkeys(
        ("nextval", "currval", "lastval", "setval"),
        "uses a sequence: it has side effects and changes between calls",
    ),
    **dict.fromkeys(
        ("pg_sleep", "pg_sleep_for", "pg_sleep_until"),
        "waits: a row filter runs for every row and would stall every query",
    ),
    **dict.fromkeys(
        ("set_config", "current_setting"),
        "reads or changes settings the agent itself can SET: use policyc.claim() for identity",
    ),
    **dict.fromkeys(
        ("pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir",
         "pg_ls_waldir", "pg_ls_tmpdir"),
        "reads server files",
    ),
    **dict.fromkeys(
        ("dblink", "dblink_exec", "dblink_connect", "dblink_open", "dblink_send_query"),
        "reaches other databases",
    ),
    **dict.fromkeys(
        ("query_to_xml", "query_to_json", "table_to_xml", "cursor_to_xml", "xpath",
         "query_to_xml_and_xmlschema"),
        "runs or reads arbitrary SQL",
    ),
    **dict.fromkeys(
        ("pg_notify", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
         "pg_rotate_logfile", "pg_advisory_lock", "pg_advisory_xact_lock",
         "pg_try_advisory_lock", "pg_logical_emit_message"),
        "has side effects",
    ),
}  # fmt: skip

_NODE_TYPES = frozenset(
    {
        "A_ArrayExpr", "A_Const", "A_Expr", "A_Indices", "A_Indirection", "A_Star", "Alias",
        "BitString", "Boolean", "BooleanTest", "BoolExpr", "CaseExpr", "CaseWhen",
        "CoalesceExpr", "CollateClause", "ColumnRef", "CommonTableExpr", "Float", "FuncCall",
        "Integer", "JoinExpr", "List", "MinMaxExpr", "NamedArgExpr", "NullTest",
        "RangeFunction", "RangeSubselect", "RangeVar", "ResTarget", "RowExpr", "SelectStmt",
        "SortBy", "SQLValueFunction", "String", "SubLink", "TypeCast", "TypeName", "WithClause",
    }
)  # fmt: skip
"""Parse-tree node types a filter may contain; anything else is refused by name."""

_NODE_WORDS: Mapping[str, str] = {
    "ParamRef": "a parameter ($1)",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "GroupingFunc": "GROUPING()",
    "WindowDef": "a window definition",
    "XmlExpr": "an XML expression",
    "XmlSerialize": "an XML expression",
}

_OUTER_SELECT_KEYS = frozenset({"targetList", "whereClause", "limitOption", "op"})
_REFUSED_SUBQUERY_KEYS: Mapping[str, str] = {
    "intoClause": "SELECT INTO is not allowed in a row filter",
    "lockingClause": "FOR UPDATE/SHARE is not allowed in a row filter: it would lock rows",
    "windowClause": "window functions are not allowed in a row filter",
}
_SUBQUERY_CLAUSES = (
    "distinctClause", "targetList", "whereClause", "groupClause", "havingClause",
    "sortClause", "limitOffset", "limitCount", "valuesLists",
)  # fmt: skip
_AGGREGATE_FLAGS = ("agg_star", "agg_distinct", "agg_order", "agg_filter", "agg_within_group")

Scope = dict[str, str | None]
"""Relation names visible to a column reference -> their schema (None: CTE or subquery)."""


def check_row_filter(expression: str, table: TableName) -> list[str]:
    """Every reason ``expression`` is unsafe as the row filter of ``table``; empty when safe.

    Messages name functions, tables and constructs, never literal values of the filter.
    """
    if not isinstance(expression, str):
        return ["a row filter must be a non-empty SQL boolean expression"]
    return list(_check_row_filter(expression, table))


@lru_cache(maxsize=4096)
def _check_row_filter(expression: str, table: TableName) -> tuple[str, ...]:
    """:func:`check_row_filter`, once per distinct filter and table (policies repeat them)."""
    return tuple(_check(expression, table))


def _check(expression: str, table: TableName) -> list[str]:
    if not expression.strip():
        return ["a row filter must be a non-empty SQL boolean expression"]
    if len(expression) > MAX_LENGTH:
        return [f"a row filter is limited to {MAX_LENGTH} characters"]
    sql = _PREFIX + expression
    try:
        tree = json.loads(parse_sql_json(sql))
    except RecursionError:
        return ["row filter is nested too deeply"]
    except ParseError as exc:
        message = str(exc.args[0]) if exc.args else "syntax error"
        location = exc.args[1] if len(exc.args) > 1 else None
        index = location - len(_PREFIX) if isinstance(location, int) else -1
        where = f" (at character {index + 1} of the filter)" if index >= 0 else ""
        return [f"does not parse as a SQL expression: {message}{where}"]
    problems = _token_problems(sql)
    statements = tree.get("stmts", [])
    if len(statements) != 1:
        return [*problems, "must be a single expression, not several statements"]
    select = statements[0].get("stmt", {}).get("SelectStmt")
    if not isinstance(select, dict):
        return [*problems, "must be a single boolean expression"]
    extra = sorted(set(select) - _OUTER_SELECT_KEYS)
    if extra or select.get("op") != "SETOP_NONE" or "whereClause" not in select:
        return [
            *problems,
            "must be a single boolean expression (no UNION, ORDER BY, GROUP BY, LIMIT... after it)",
        ]
    walker = _Walker(table)
    try:
        walker.walk(select["whereClause"], {table.name: table.schema}, in_subquery=False)
    except RecursionError:
        return [*problems, "row filter is nested too deeply"]
    return _unique([*problems, *walker.problems])


def _token_problems(sql: str) -> list[str]:
    problems: list[str] = []
    for token in scan(sql):
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            problems.append(
                "comments are not allowed in a row filter: they can hide the end of the expression"
            )
        elif token.name == "ASCII_59":
            problems.append("';' is not allowed in a row filter: it must be one expression")
    return problems


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _names(items: object) -> list[str]:
    """svals of a list of ``{"String": {"sval": ...}}`` nodes (other nodes are skipped)."""
    out: list[str] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("String"), dict):
                out.append(str(item["String"].get("sval", "")))
    return out


class _Walker:
    """Walks the parse tree of one filter and records every reason it is unsafe."""

    def __init__(self, table: TableName) -> None:
        self.table = table
        self.problems: list[str] = []

    def walk(self, value: object, scope: Scope, *, in_subquery: bool) -> None:
        if isinstance(value, list):
            for item in value:
                self.walk(item, scope, in_subquery=in_subquery)
        elif isinstance(value, dict):
            if len(value) == 1:
                ((kind, fields),) = value.items()
                if kind[:1].isupper() and isinstance(fields, dict):
                    self._node(kind, fields, scope, in_subquery=in_subquery)
                    return
            for item in value.values():
                self.walk(item, scope, in_subquery=in_subquery)

    def _node(self, kind: str, fields: dict[str, Any], scope: Scope, *, in_subquery: bool) -> None:
        if kind not in _NODE_TYPES:
            what = _NODE_WORDS.get(kind, f"SQL construct {kind}")
            self.problems.append(f"{what} is not allowed in a row filter")
            return
        if kind == "SelectStmt":
            self._select(fields, scope)
            return
        if kind == "FuncCall":
            self._function(fields, in_subquery=in_subquery)
            fields = {k: v for k, v in fields.items() if k not in ("funcname", "over")}
        elif kind == "ColumnRef":
            self._column(fields, scope)
            return
        elif kind == "TypeCast":
            self._type(fields.get("typeName"))
        elif kind == "A_Expr":
            self._operator(fields.get("name"))
        elif kind == "RangeVar":
            self._relation(fields, set())
            return
        for item in fields.values():
            self.walk(item, scope, in_subquery=in_subquery)

    # --- subqueries -----------------------------------------------------------------------

    def _select(self, fields: dict[str, Any], outer: Scope) -> None:
        for key, message in _REFUSED_SUBQUERY_KEYS.items():
            if fields.get(key):
                self.problems.append(message)
        if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
            for side in ("larg", "rarg"):
                if isinstance(fields.get(side), dict):
                    self._select(fields[side], outer)
            self.walk(fields.get("sortClause"), outer, in_subquery=True)
            return
        scope: Scope = dict(outer)
        ctes = self._ctes(fields.get("withClause"), scope)
        for item in fields.get("fromClause") or []:
            self._from_item(item, scope, ctes)
        for clause in _SUBQUERY_CLAUSES:
            self.walk(fields.get(clause), scope, in_subquery=True)

    def _ctes(self, with_clause: object, scope: Scope) -> set[str]:
        names: set[str] = set()
        if not isinstance(with_clause, dict):
            return names
        for item in with_clause.get("ctes") or []:
            cte = item.get("CommonTableExpr") if isinstance(item, dict) else None
            if not isinstance(cte, dict):
                continue
            name = str(cte.get("ctename", ""))
            names.add(name)
            scope[name] = None
            query = cte.get("ctequery")
            if isinstance(query, dict) and "SelectStmt" in query:
                self._select(query["SelectStmt"], scope)
            else:
                self.walk(query, scope, in_subquery=True)
        return names

    def _from_item(self, item: object, scope: Scope, ctes: set[str]) -> None:
        if not isinstance(item, dict) or len(item) != 1:
            return
        ((kind, fields),) = item.items()
        if not isinstance(fields, dict):
            return
        alias = fields.get("alias")
        alias_name = alias.get("aliasname") if isinstance(alias, dict) else None
        if kind == "RangeVar":
            schema = self._relation(fields, ctes)
            scope[str(alias_name or fields.get("relname", ""))] = schema
        elif kind == "RangeSubselect":
            subquery = fields.get("subquery")
            if isinstance(subquery, dict) and "SelectStmt" in subquery:
                self._select(subquery["SelectStmt"], dict(scope))
            if alias_name:
                scope[str(alias_name)] = None
        elif kind == "JoinExpr":
            self._from_item(fields.get("larg"), scope, ctes)
            self._from_item(fields.get("rarg"), scope, ctes)
            if alias_name:
                scope[str(alias_name)] = None
            self.walk(fields.get("quals"), scope, in_subquery=True)
        elif kind == "RangeFunction":
            self.walk(fields.get("functions"), scope, in_subquery=True)
            if alias_name:
                scope[str(alias_name)] = None
        else:
            self.walk(item, scope, in_subquery=True)

    def _relation(self, fields: dict[str, Any], ctes: set[str]) -> str | None:
        """Check a table read by a subquery; return its schema (None for a CTE)."""
        relname = str(fields.get("relname", ""))
        schema = fields.get("schemaname")
        if fields.get("catalogname"):
            self.problems.append(f"table {relname}: database-qualified names are not allowed")
            return None
        if schema is None:
            if relname in ctes:
                return None
            self.problems.append(
                f"table {relname} in a subquery must be schema-qualified "
                f"(e.g. {self.table.schema}.{relname})"
            )
            return None
        if schema != self.table.schema:
            self.problems.append(
                f"subquery reads {schema}.{relname}: a row filter on {self.table} may only read "
                f"tables in schema {self.table.schema}"
            )
        return str(schema)

    # --- expressions ----------------------------------------------------------------------

    def _column(self, fields: dict[str, Any], scope: Scope) -> None:
        raw = fields.get("fields") or []
        names = _names(raw)
        star = bool(raw) and isinstance(raw[-1], dict) and "A_Star" in raw[-1]
        qualifier = names if star else names[:-1]
        if not qualifier:
            return
        shown = ".".join(names + (["*"] if star else []))
        if len(qualifier) == 1 and qualifier[0] in scope:
            return
        if len(qualifier) == 2 and qualifier[1] in scope and scope[qualifier[1]] == qualifier[0]:
            return
        self.problems.append(
            f"column reference {shown} names another table: qualify columns only with "
            f"{self.table.name} (or a table of a subquery)"
        )

    def _function(self, fields: dict[str, Any], *, in_subquery: bool) -> None:
        parts = _names(fields.get("funcname"))
        name = parts[-1] if parts else ""
        schema = parts[-2] if len(parts) >= 2 else None
        shown = ".".join(parts)
        if fields.get("over"):
            self.problems.append(f"window function {shown} is not allowed in a row filter")
            return
        is_aggregate = any(fields.get(flag) for flag in _AGGREGATE_FLAGS) or (
            schema in (None, "pg_catalog") and name in AGGREGATE_FUNCTIONS
        )
        if is_aggregate and not in_subquery:
            self.problems.append(
                f"aggregate function {shown} is not allowed in a row filter (only in a subquery)"
            )
            return
        if len(parts) > 2:
            self.problems.append(f"function {shown}: database-qualified names are not allowed")
        elif schema == IDENTITY_SCHEMA:
            if name not in POLICYC_FUNCTIONS:
                allowed = ", ".join(f"policyc.{n}()" for n in sorted(POLICYC_FUNCTIONS))
                self.problems.append(
                    f"function {shown} is not a row-filter function; use {allowed}"
                )
        elif schema not in (None, "pg_catalog"):
            self.problems.append(
                f"function {shown} is not allowed: a row filter may call only allowlisted "
                "pg_catalog functions and policyc.claim(), policyc.agent(), policyc.session_id()"
            )
        elif name in SAFE_FUNCTIONS or (is_aggregate and name in AGGREGATE_FUNCTIONS):
            return
        elif name in POLICYC_FUNCTIONS:
            self.problems.append(f"call policyc.{name}() with its schema, not {name}()")
        else:
            self.problems.append(f"function {shown} is not allowed in a row filter: {_why(name)}")

    def _type(self, type_name: object) -> None:
        if not isinstance(type_name, dict):
            return
        parts = _names(type_name.get("names"))
        if len(parts) >= 2 and parts[0] not in ("pg_catalog", self.table.schema):
            self.problems.append(
                f"cast to {'.'.join(parts)} is not allowed: types must be built in or in schema "
                f"{self.table.schema}"
            )

    def _operator(self, name: object) -> None:
        parts = _names(name)
        if len(parts) >= 2 and parts[0] != "pg_catalog":
            self.problems.append(
                f"operator {'.'.join(parts)} is not allowed: only built-in operators may be "
                "schema-qualified"
            )


def _why(name: str) -> str:
    if name in _REASONS:
        return f"it {_REASONS[name]}"
    if name.startswith("lo_"):
        return "it reads or changes large objects"
    if name.startswith("pg_"):
        return "it inspects or administers the server"
    return "it is not on the allowlist of immutable and stable functions"


# --- What a filter leaves open (warnings, not errors) -------------------------------------


def filter_mentions(expression: str, table: TableName) -> frozenset[str]:
    """Names of the columns of ``table`` that the row filter ``expression`` mentions.

    A column counts when it is referenced unqualified (anywhere: without the live catalog an
    unqualified name inside a subquery cannot be told apart from the subquery's own columns, so
    this errs towards "mentioned") or qualified with the filtered table's name
    (``claims.visit_id``, ``public.claims.visit_id``).  A filter that does not parse mentions
    nothing.  Used to warn about writable references the filter does not constrain.
    """
    return _filter_mentions(expression, table)


@lru_cache(maxsize=4096)
def _filter_mentions(expression: str, table: TableName) -> frozenset[str]:
    try:
        tree = json.loads(parse_sql_json(_PREFIX + expression))
    except (ParseError, RecursionError):
        return frozenset()
    found: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            ref = value.get("ColumnRef")
            if isinstance(ref, dict):
                raw = ref.get("fields") or []
                names = _names(raw)
                if len(names) != len(raw) or not names:
                    continue  # ends in * (a whole row): no column named
                qualifier, column = names[:-1], names[-1]
                if qualifier in ([], [table.name], [table.schema, table.name]):
                    found.add(column)
                continue
            stack.extend(value.values())
    return frozenset(found)


def unfiltered_write_warnings(policy: Policy) -> list[Problem]:
    """Offline heuristic for ``policyc check``: a group that filters the rows of tables it
    reads but writes a table without a row filter of its own.

    Such writes are confined to nothing: any foreign-key column of that table can point at
    another tenant's rows (and the foreign-key error tells the agent which ids exist there).
    ``policyc check`` cannot see foreign keys; ``policyc plan`` and ``apply`` read them and
    warn precisely.  Warnings never fail the check.
    """
    warnings: list[Problem] = []
    for group in policy.groups:
        if not group.rows:
            continue
        filtered = ", ".join(str(t) for t in sorted(group.rows))
        for table in sorted(group.write):
            if table in group.rows:
                continue
            warnings.append(Problem(
                policy.where(f"groups.{group.name}.write.{table}"),
                f"group {group.name} writes {table} without a row filter on it, while "
                f"it filters the rows of {filtered}: its writes to {table} are not confined to "
                f"its tenant, and a column of {table} that references a filtered table can "
                "point at another tenant's rows (heuristic: this check cannot see foreign keys; "
                "`policyc plan` lists the ones left open). Add a rows entry for "
                f"{table} that constrains those columns.",
            ))
    return sorted(warnings)
