"""Read what the live database has: the snapshot the compiler and plan work from.

Every query here is read-only and batched per object family, so plan costs a handful of round
trips however many tables and groups a policy has.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import psycopg
from psycopg import sql

from policyc.policy.model import TableName
from policyc.resources import sql_dir

MANAGED_ROLE_COMMENT = "policyc group {group} of database {database}"
RUNTIME_ROLES = ("policyc_owner", "policyc_auditor", "policyc_proxy")


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str  # format_type(): "character varying(40)", "date", ...
    type_name: str  # pg_type.typname of the base type: "varchar", "date", "int4", ...
    category: str  # pg_type.typcategory: S string, D datetime, N numeric, U user (uuid), ...
    not_null: bool
    has_default: bool
    sequence: tuple[str, str] | None = None  # (schema, name) a serial default draws from


@dataclass(frozen=True)
class Table:
    name: TableName
    kind: str  # r table, p partitioned table, v view, m materialized view, f foreign
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    row_security: bool
    public_privileges: tuple[str, ...]  # privileges PUBLIC holds on it (bypass risk)

    def column(self, name: str) -> Column | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, Column]:
        return {col.name: col for col in self.columns}

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class ForeignKey:
    """One foreign key: ``columns`` of ``table`` reference ``ref_columns`` of ``ref_table``."""

    table: TableName
    name: str
    columns: tuple[str, ...]
    ref_table: TableName
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class Role:
    name: str
    comment: str | None
    can_login: bool


@dataclass(frozen=True)
class LedgerEntry:
    """One row of policyc.applied_objects.  ``semantic`` and ``drop_sql`` are decoded from
    their JSON text on first use: a plan needs them only for what changed."""

    key: str
    family: str
    desired_hash: str
    observed: str
    semantic_json: str = field(repr=False)
    drop_sql_json: str = field(repr=False)

    @cached_property
    def semantic(self) -> Mapping[str, Any]:
        value: Mapping[str, Any] = json.loads(self.semantic_json)
        return value

    @cached_property
    def drop_sql(self) -> tuple[str, ...]:
        return tuple(json.loads(self.drop_sql_json))


@dataclass(frozen=True)
class Catalog:
    """A snapshot of the parts of the database a policy touches."""

    database: str
    server_version: int
    is_superuser: bool
    tables: Mapping[TableName, Table]
    roles: Mapping[str, Role]
    runtime_version: str | None
    runtime_via_extension: bool
    extension_available: bool
    ledger: Mapping[str, LedgerEntry]
    observed: Mapping[str, str] = field(default_factory=dict)
    extra_privileges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the foreign keys of the policy's tables, by referencing table (see load_foreign_keys)
    foreign_keys: Mapping[TableName, tuple[ForeignKey, ...]] = field(default_factory=dict)


@cache
def _query(name: str) -> str:
    """Catalog queries live in sql/catalog/NAME.sql."""
    return (sql_dir() / "catalog" / f"{name}.sql").read_text()


@contextlib.contextmanager
def without_jit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Run the catalog queries with JIT compilation off, in a transaction.

    A catalog query over thousands of views and columns is estimated costly enough that
    PostgreSQL compiles it with LLVM first, which takes far longer (about 0.1 s each) than
    running it.  The setting is local to the transaction and put back afterwards; outside a
    transaction one is opened for the duration.
    """
    if conn.info.server_version < 110000:  # no JIT before PostgreSQL 11
        yield
        return
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction() if idle else contextlib.nullcontext():
        row = conn.execute("SELECT current_setting('jit'), set_config('jit', 'off', true)")
        previous = row.fetchone()
        try:
            yield
        finally:
            if previous is not None and not idle and \
                    conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                conn.execute("SELECT set_config('jit', %s, true)", (previous[0],))


def _fetch(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run a query; ``query`` is a file name in sql/catalog or, with a space, SQL text."""
    text = query if " " in query else _query(query)
    with conn.cursor() as cur:
        cur.execute(text.encode() if params is None else text, params)
        return cur.fetchall()


_TABLES = "tables"

_COLUMNS = "columns"

_ROLES = "roles"


def load_tables(
    conn: psycopg.Connection[Any], names: Iterable[TableName]
) -> dict[TableName, Table]:
    wanted = sorted(set(names))
    schemas = [t.schema for t in wanted]
    rels = [t.name for t in wanted]
    columns: dict[TableName, list[Column]] = {}
    for schema, rel, attname, type_sql, typname, category, not_null, has_def, seq in _fetch(
        conn, _COLUMNS, (schemas, rels)
    ):
        columns.setdefault(TableName(schema, rel), []).append(
            Column(attname, type_sql, typname, category, not_null, has_def,
                   (seq[0], seq[1]) if seq else None)
        )
    tables = {}
    for schema, rel, kind, rls, public, pk in _fetch(conn, _TABLES, (schemas, rels)):
        name = TableName(schema, rel)
        tables[name] = Table(
            name, kind, tuple(columns.get(name, [])), tuple(pk), rls, tuple(public)
        )
    return tables


_FOREIGN_KEYS = "foreign_keys"


def load_foreign_keys(
    conn: psycopg.Connection[Any], names: Iterable[TableName]
) -> dict[TableName, tuple[ForeignKey, ...]]:
    """The foreign keys of ``names`` (the referencing side), in constraint-name order."""
    wanted = sorted(set(names))
    found: dict[TableName, list[ForeignKey]] = {}
    for schema, rel, conname, cols, ref_schema, ref_rel, ref_cols in _fetch(
        conn, _FOREIGN_KEYS, ([t.schema for t in wanted], [t.name for t in wanted])
    ):
        table = TableName(schema, rel)
        found.setdefault(table, []).append(
            ForeignKey(table, conname, tuple(cols), TableName(ref_schema, ref_rel),
                       tuple(ref_cols))
        )
    return {table: tuple(keys) for table, keys in found.items()}


def load_roles(conn: psycopg.Connection[Any], names: Iterable[str]) -> dict[str, Role]:
    return {
        name: Role(name, comment, login)
        for name, comment, login in _fetch(conn, _ROLES, (sorted(set(names)),))
    }


def _runtime(conn: psycopg.Connection[Any]) -> tuple[str | None, bool, bool]:
    ext = _fetch(conn, "SELECT extversion FROM pg_extension WHERE extname = 'policyc'")
    available = bool(
        _fetch(conn, "SELECT 1 FROM pg_available_extensions WHERE name = 'policyc'")
    )
    if ext:
        return str(ext[0][0]), True, available
    has_ledger = _fetch(conn, "SELECT to_regclass('policyc.applied_objects') IS NOT NULL")[0][0]
    if not has_ledger:
        return None, False, available
    row = _fetch(
        conn,
        "SELECT semantic ->> 'version' FROM policyc.applied_objects "
        "WHERE object_key = 'runtime'",
    )
    return (str(row[0][0]) if row and row[0][0] else None), False, available


def load_ledger(conn: psycopg.Connection[Any]) -> dict[str, LedgerEntry]:
    if not _fetch(conn, "SELECT to_regclass('policyc.applied_objects') IS NOT NULL")[0][0]:
        return {}
    rows = _fetch(
        conn,
        "SELECT object_key, family, desired_hash, observed, semantic::text, "
        "to_jsonb(drop_sql)::text FROM policyc.applied_objects",
    )
    return {
        key: LedgerEntry(key, family, digest, observed, semantic, drop)
        for key, family, digest, observed, semantic, drop in rows
    }


def snapshot(
    conn: psycopg.Connection[Any],
    tables: Iterable[TableName],
    roles: Iterable[str],
    service_role: str,
) -> Catalog:
    """Everything plan needs, read in one go (observations are added by :func:`observe_all`)."""
    database, version, superuser = _fetch(
        conn,
        "SELECT current_database(), current_setting('server_version_num')::int, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )[0]
    version_installed, via_extension, available = _runtime(conn)
    tables = list(tables)
    return Catalog(
        database=database,
        server_version=version,
        is_superuser=superuser,
        tables=load_tables(conn, tables),
        roles=load_roles(conn, [*roles, service_role, *RUNTIME_ROLES]),
        runtime_version=version_installed,
        runtime_via_extension=via_extension,
        extension_available=available,
        ledger=load_ledger(conn),
        foreign_keys=load_foreign_keys(conn, tables),
    )


# Observations: one text per managed object, compared with what apply recorded ---------------

_OBSERVE_ROLES = "observe_roles"

_OBSERVE_SCHEMAS = "observe_schemas"

_OBSERVE_VIEWS = "observe_views"

_OBSERVE_VIEWS_FULL = "observe_views_full"

_OBSERVE_OWNER_GRANTS = "observe_owner_grants"

_OBSERVE_RLS = "observe_rls"

_OBSERVE_RLS_FULL = "observe_rls_full"

FINGERPRINT = "fp:"
"""Observations of views and row security start with a fingerprint line (``fp:<md5>``)."""

_OBSERVE_TRIGGERS = "observe_triggers"

_EXTRA_PRIVILEGES = "extra_privileges"

_OBSERVE_APPROVERS = "observe_approvers"


def revoke_statement(
    group: str, privilege: str, kind: str, schema: str | None, name: str, column: str | None,
    /,
) -> str:
    """The statement that takes one privilege found by extra_privileges.sql away again."""
    role = sql.Identifier(group)
    if kind == "ROLE":  # name is regrole text, already quoted by the server
        return sql.SQL("REVOKE {} FROM {}").format(sql.SQL(name), role).as_string(None)
    if privilege == "OWNER":
        return sql.SQL("ALTER {} {} OWNER TO policyc_owner").format(
            sql.SQL(kind), sql.Identifier(schema or "", name)
        ).as_string(None)
    target: sql.Composable
    if kind == "FUNCTION":  # name is regprocedure text, already quoted by the server
        target = sql.SQL(name)
    elif schema is None:
        target = sql.Identifier(name)
    else:
        target = sql.Identifier(schema, name)
    columns = sql.SQL(" ({})").format(sql.Identifier(column)) if column else sql.SQL("")
    return sql.SQL("REVOKE {}{} ON {} {} FROM {}").format(
        sql.SQL(privilege), columns, sql.SQL(kind), target, role
    ).as_string(None)


def _split_observation(text: str) -> tuple[str, str]:
    """(fingerprint, full text) of a recorded observation; ledgers written before fingerprints
    existed hold the full text only."""
    if text.startswith(FINGERPRINT):
        fingerprint, _, full = text.partition("\n")
        return fingerprint, full
    return "", text


def _observe_fingerprinted(
    conn: psycopg.Connection[Any],
    cheap: list[tuple[str, int, str]],
    full_query: str,
    recorded: Mapping[str, str],
    refresh: bool,
) -> dict[str, str]:
    """Observations of objects that are expensive to print back (views: pg_get_viewdef;
    row-security policies: pg_get_expr), as ``fp:<md5>``, a newline, then the full text.

    ``cheap`` holds (key, oid, fingerprint) per object: an md5 of the catalog rows as stored
    (the rule's or policy's parse tree, options, owner, grants), read without opening or
    deparsing anything.  The full text is read (``full_query``, by oid) only for objects whose
    fingerprint differs from the ``recorded`` one.  An object whose full text is still the
    recorded one is not drift (a dump and restore rewrites the stored trees, not what they
    do): without ``refresh`` the recorded observation is returned for it; with ``refresh``
    (apply writing the ledger) the new fingerprint is.
    """
    observed: dict[str, str] = {}
    pending: list[tuple[str, int, str]] = []
    for key, oid, fingerprint in cheap:
        previous = recorded.get(key)
        if previous is not None and _split_observation(previous)[0] == fingerprint:
            observed[key] = previous
        else:
            pending.append((key, oid, fingerprint))
    if pending:
        full = dict(_fetch(conn, full_query, ([oid for _, oid, _ in pending],)))
        for key, oid, fingerprint in pending:
            text = f"{fingerprint}\n{full.get(oid, '')}"
            previous = recorded.get(key)
            if (not refresh and previous is not None
                    and _split_observation(previous)[1] == full.get(oid)):
                text = previous
            observed[key] = text
    return observed


def observe_all(
    conn: psycopg.Connection[Any],
    *,
    roles: Iterable[str],
    schemas: Iterable[str],
    tables: Iterable[TableName],
    groups: Iterable[str],
    service_role: str,
    recorded: Mapping[str, str] | None = None,
    refresh: bool = False,
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Observed state of every object family, keyed like the compiler's object keys.

    ``recorded`` are the observations the ledger holds (they let views and row security be
    compared by a fingerprint, see :func:`_observe_fingerprinted`); ``refresh`` asks for
    current fingerprints even where nothing else changed, as apply records them.
    """
    observed: dict[str, str] = {}
    wanted = sorted(set(tables))
    tab_args = ([t.schema for t in wanted], [t.name for t in wanted])
    superuser = _fetch(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]
    # only a superuser can compare password verifiers; others see "unknown" (NULL)
    credential = (
        "(SELECT a.rolpassword IS NOT DISTINCT FROM s.rolpassword FROM pg_authid a, pg_authid s"
        " WHERE a.oid = r.oid AND s.rolname = %s)" if superuser else "%s::text"
    )
    role_query = _query(_OBSERVE_ROLES).replace("{credential}", credential)
    param = service_role if superuser else None
    for name, text in _fetch(conn, role_query, (param, sorted(set(roles)))):
        observed[f"role:{name}"] = text
    schema_list = sorted(set(schemas))
    for name, text in _fetch(conn, _OBSERVE_SCHEMAS, (schema_list,)):
        observed[f"schema:{name}"] = text
    views = [(f"view:{schema}:{name}", oid, fingerprint)
             for schema, name, oid, fingerprint in _fetch(conn, _OBSERVE_VIEWS, (schema_list,))]
    observed.update(
        _observe_fingerprinted(conn, views, _OBSERVE_VIEWS_FULL, recorded or {}, refresh))
    has_owner = _fetch(conn, "SELECT to_regrole('policyc_owner') IS NOT NULL")[0][0]
    if has_owner:
        for schema, name, text in _fetch(conn, _OBSERVE_OWNER_GRANTS, tab_args):
            observed[f"base-grants:{schema}.{name}"] = text
    rls = [(f"rls:{schema}.{name}", oid, fingerprint)
           for schema, name, oid, fingerprint in _fetch(conn, _OBSERVE_RLS, tab_args)]
    observed.update(_observe_fingerprinted(conn, rls, _OBSERVE_RLS_FULL, recorded or {}, refresh))
    for schema, name, text in _fetch(conn, _OBSERVE_TRIGGERS, tab_args):
        observed[f"trigger:{schema}.{name}"] = text
    if _fetch(conn, "SELECT to_regclass('policyc.approver_roles') IS NOT NULL")[0][0]:
        observed["approvers"] = str(_fetch(conn, _OBSERVE_APPROVERS)[0][0] or "")
    extra: dict[str, list[str]] = {}
    for group, *privilege in _fetch(conn, _EXTRA_PRIVILEGES, {"groups": sorted(set(groups))}):
        extra.setdefault(group, []).append(revoke_statement(group, *privilege))
    for group in groups:
        observed[f"privileges:{group}"] = json.dumps(extra.get(group, []))
    return observed, {k: tuple(v) for k, v in extra.items()}
