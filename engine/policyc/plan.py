"""Plan: what apply would change, diffed from the compiled policy, the ledger and the catalog.

Each managed object is in one of four states against the ledger apply keeps in
``policyc.applied_objects``: new (create), changed in the policy (update), changed by hand since
the last apply (drift), or gone from the policy (drop).  Changes that widen what an agent can
see or do are flagged as authorization hazards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from policyc import RUNTIME_VERSION
from policyc.catalog import Catalog, observe_all, snapshot, without_jit
from policyc.compiler import (
    Compiled,
    DesiredObject,
    compile_policy,
    policy_tables,
    unmanaged_timeouts,
)
from policyc.compiler.filterreads import FilterReads, filter_reads
from policyc.compiler.objects import FAMILIES, KIND_ORDER
from policyc.errors import Problem
from policyc.policy.model import ALL_COLUMNS, Columns, Policy, TableName
from policyc.policy.rowfilter import filter_mentions
from policyc.resources import sql_dir


@dataclass(frozen=True)
class Change:
    key: str
    family: str
    action: str  # create | update | drift | drop
    statements: tuple[str, ...]
    hazards: tuple[str, ...] = ()
    note: str = ""

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    compiled: Compiled
    catalog: Catalog
    # what the policy leaves open or makes slow that the database shows (foreign keys, row
    # filters that scan a large table or call a function per row): printed, never fatal
    warnings: tuple[Problem, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def drift(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "drift")

    def by_family(self) -> dict[str, list[Change]]:
        grouped: dict[str, list[Change]] = {f: [] for f in FAMILIES}
        for change in self.changes:
            grouped.setdefault(change.family, []).append(change)
        return {f: c for f, c in grouped.items() if c}


def observe(
    conn: psycopg.Connection[Any], policy: Policy, catalog: Catalog, *, refresh: bool = False
) -> Catalog:
    """``catalog`` with every managed object observed; ``refresh`` as in
    :func:`policyc.catalog.observe_all` (apply sets it when it writes the ledger)."""
    groups = [g.name for g in policy.groups]
    ledger_groups = [k.split(":", 1)[1] for k in catalog.ledger if k.startswith("role:")]
    ledger_tables = {
        k.split(":", 1)[1] for k in catalog.ledger if k.split(":", 1)[0] in
        ("rls", "trigger", "base-grants")
    }
    tables = policy_tables(policy) | {TableName.parse(t) for t in ledger_tables}
    with without_jit(conn):
        observed, extra = observe_all(
            conn,
            roles=[*groups, *ledger_groups],
            schemas=[*groups, *ledger_groups],
            tables=tables,
            groups=groups,
            service_role=policy.proxy.service_role,
            recorded={key: entry.observed for key, entry in catalog.ledger.items()},
            refresh=refresh,
        )
    for group in policy.groups:
        key = f"role:{group.name}"
        if key in observed:
            observed[key] = _without_settings(observed[key], unmanaged_timeouts(group))
    return dataclasses.replace(catalog, observed=observed, extra_privileges=extra)


SETTINGS_MARKER = "\nsettings:"
"""Where a role's observation (sql/catalog/observe_roles.sql) lists its settings, one a line."""


def _without_settings(observation: str, names: tuple[str, ...]) -> str:
    """A role's observation without the lines of the settings ``names`` (a timeout the policy
    leaves to the DBA is theirs to set or change by hand: no drift)."""
    head, marker, settings = observation.partition(SETTINGS_MARKER)
    if not marker or not names:
        return observation
    kept = [
        line for line in settings.split("\n")
        if line.removeprefix("db:").partition("=")[0] not in names
    ]
    return head + marker + "\n".join(kept)


def load_catalog(conn: psycopg.Connection[Any], policy: Policy) -> Catalog:
    with without_jit(conn):
        catalog = snapshot(
            conn,
            tables=policy_tables(policy),
            roles=[*(g.name for g in policy.groups), *policy.approvals.approvers],
            service_role=policy.proxy.service_role,
        )
        return observe(conn, policy, catalog)


def _view_hazards(new: Mapping[str, Any], old: Mapping[str, Any] | None, group: str) -> list[str]:
    hazards = []
    old_read: Mapping[str, Any] = (old or {}).get("read", {})
    clear: list[str] = []
    masked: list[str] = []
    for column, mask in sorted(new.get("read", {}).items()):
        if column not in old_read or (old_read[column] and old_read[column] != mask):
            (masked if mask else clear).append(f"{column} ({mask})" if mask else column)
    table = new["table"]
    if clear:
        hazards.append(f"{group} may read {table} in clear: {', '.join(clear)}")
    if masked:
        hazards.append(f"{group} may read {table} masked: {', '.join(masked)}")
    for verb in ("insert", "update"):
        added = sorted(set(new.get(verb, [])) - set((old or {}).get(verb, [])))
        if added:
            hazards.append(f"{group} may {verb} {table}: {', '.join(added)}")
    if new.get("delete") and not (old or {}).get("delete"):
        hazards.append(f"{group} may delete from {table}")
    return hazards


def _hazards(obj: DesiredObject, old: Mapping[str, Any] | None) -> list[str]:
    if obj.kind == "role" and old is None:
        return [f"new group role {obj.semantic['group']}: agents mapped to it can connect"]
    if obj.kind == "view":
        return _view_hazards(obj.semantic, old, obj.key.split(":")[1])
    if obj.kind == "approvers":
        before = set((old or {}).get("approvers", []))
        return [f"members of {role} may approve held statements"
                for role in obj.semantic["approvers"] if role not in before]
    if obj.kind == "rls" and old is not None:
        hazards = []
        old_filters = old.get("filters", {})
        for group, expression in sorted(old_filters.items()):
            current = obj.semantic["filters"].get(group)
            if current is None:
                hazards.append(f"row filter of {group} on {obj.key[4:]} removed")
            elif current != expression:
                hazards.append(f"row filter of {group} on {obj.key[4:]} changed")
        return hazards
    return []


def _drop_hazards(key: str, semantic: Mapping[str, Any]) -> list[str]:
    kind = key.split(":", 1)[0]
    if kind == "rls" and semantic.get("filters"):
        return [f"row filters on {key[4:]} removed"]
    if kind == "trigger":
        return [f"audit of row changes on {key[8:]} stops"]
    return []


def make_plan(conn: psycopg.Connection[Any], policy: Policy) -> Plan:
    """Compare the policy with the live database; read-only."""
    catalog = load_catalog(conn, policy)
    compiled = compile_policy(policy, catalog)
    changes: list[Change] = []
    desired = compiled.by_key()
    for obj in compiled.objects:
        entry = catalog.ledger.get(obj.key)
        if obj.kind == "runtime":
            if catalog.runtime_version != RUNTIME_VERSION:
                action = "create" if catalog.runtime_version is None else "update"
                via = "extension" if catalog.extension_available else "script"
                changes.append(
                    Change(
                        obj.key, obj.family, action, (),
                        note=f"runtime {catalog.runtime_version or '-'} -> {RUNTIME_VERSION} "
                        f"(via {via})",
                    )
                )
            continue
        if obj.adopt_existing:
            if obj.key.split(":", 1)[1] not in catalog.roles:
                changes.append(Change(obj.key, obj.family, "create", obj.create_sql))
            continue
        if obj.kind == "privileges":
            if obj.create_sql:
                changes.append(
                    Change(obj.key, obj.family, "drift", obj.create_sql,
                           note="privileges granted outside policyc are revoked")
                )
            continue
        observed_now = catalog.observed.get(obj.key)
        if entry is None:
            statements = obj.create_sql
            if obj.kind == "role" and obj.key.split(":", 1)[1] in catalog.roles:
                statements = obj.update_sql or obj.create_sql
            elif obj.kind in ("rls", "trigger"):
                statements = (*obj.drop_sql, *obj.create_sql)
            changes.append(
                Change(obj.key, obj.family, "create", statements, tuple(_hazards(obj, None)))
            )
        elif not obj.matches(entry.desired_hash):
            changes.append(
                Change(obj.key, obj.family, "update", obj.statements_to_update(entry.drop_sql),
                       tuple(_hazards(obj, entry.semantic)))
            )
        elif observed_now != entry.observed:
            changes.append(
                Change(obj.key, obj.family, "drift", obj.statements_to_update(entry.drop_sql),
                       note="changed outside policyc since the last apply; apply restores it")
            )
    for key, entry in sorted(catalog.ledger.items()):
        if key in desired or key == "runtime":
            continue
        changes.append(
            Change(key, entry.family, "drop", entry.drop_sql,
                   tuple(_drop_hazards(key, entry.semantic)))
        )
    warnings = foreign_key_warnings(policy, catalog) + row_filter_warnings(conn, policy)
    return Plan(tuple(_ordered(changes)), compiled, catalog, warnings=tuple(sorted(warnings)))


def _ordered(changes: list[Change]) -> list[Change]:
    drops = [c for c in changes if c.action == "drop"]
    rest = [c for c in changes if c.action != "drop"]
    drops.sort(key=lambda c: (-KIND_ORDER.get(c.kind, 0), c.key))
    rest.sort(key=lambda c: KIND_ORDER.get(c.kind, 0))
    return drops + rest


# Warnings: writable references the writer's own row filter leaves open ----------------------


def _written(columns: Columns, all_columns: tuple[str, ...]) -> tuple[str, ...]:
    return columns if isinstance(columns, tuple) else all_columns


def foreign_key_warnings(policy: Policy, catalog: Catalog) -> tuple[Problem, ...]:
    """A warning per group and foreign key that the group can write into a table row-filtered
    for it, while its filter on the written table mentions none of the key's columns.

    Row security checks a written row against the writer's filter (WITH CHECK) before any
    foreign-key check, so a filter that constrains the reference (``visit_id IN (SELECT v.id
    FROM public.visits v WHERE <the visits filter>)``) refuses another tenant's id and a
    nonexistent one alike with 42501.  Without it an agent can attach its row to another
    tenant's row, and the foreign-key error (23503 or not) tells it which ids exist there.
    Located at the written column in the policy; never fatal.
    """
    warnings: list[Problem] = []
    for group in policy.groups:
        for table, grant in sorted(group.write.items()):
            live = catalog.tables.get(table)
            if live is None:
                continue
            insert = _written(grant.insert, live.column_names)
            update = _written(grant.update, live.column_names)
            expression = group.rows.get(table)
            mentioned = filter_mentions(expression, table) if expression else frozenset()
            for key in catalog.foreign_keys.get(table, ()):
                if key.ref_table not in group.rows or mentioned & set(key.columns):
                    continue
                written = [c for c in key.columns if c in insert or c in update]
                if not written:
                    continue
                column = written[0]
                verb = "insert" if column in insert else "update"
                listed = grant.insert if verb == "insert" else grant.update
                where = f"groups.{group.name}.write.{table}.{verb}"
                if listed is not ALL_COLUMNS:
                    where += f".{column}"
                columns = ", ".join(written)
                filter_key = f"groups.{group.name}.rows.{table}"
                if expression:
                    why = (f"its row filter on {table} ({policy.where(filter_key)}) does not "
                           f"mention {', '.join(key.columns)}")
                else:
                    why = f"it has no row filter on {table}"
                warnings.append(Problem(
                    policy.where(where),
                    f"group {group.name} may write {table}.{columns}, a reference to "
                    f"{key.ref_table} (foreign key {key.name}), which is row-filtered for "
                    f"{group.name}, but {why}: an agent can attach a row to another tenant's "
                    f"{key.ref_table} row, and the foreign-key error tells it which ids exist. "
                    f"Constrain {', '.join(key.columns)} in the row filter of {table} (e.g. "
                    f"{key.columns[0]} IN (SELECT {key.ref_columns[0]} FROM {key.ref_table} "
                    f"WHERE <its filter>)).",
                ))
    return tuple(sorted(warnings))


# Warnings: row filters that cost a scan or a call per row -----------------------------------

LARGE_TABLE_ROWS = 10_000
"""A table is large for :func:`row_filter_warnings` from this many rows (pg_class.reltuples,
PostgreSQL's estimate as of the last ANALYZE or VACUUM; a table never analyzed counts as
small).  Below it a scan costs about as much as an index probe."""


def _filters(policy: Policy) -> list[tuple[str, TableName, FilterReads]]:
    out = []
    for group in policy.groups:
        for table, expression in sorted(group.rows.items()):
            reads = filter_reads(expression, table)
            if reads is not None:
                out.append((group.name, table, reads))
    return out


def row_filter_warnings(conn: psycopg.Connection[Any], policy: Policy) -> tuple[Problem, ...]:
    """Row filters that cost every statement a scan or a function call per row (issue #14).

    Row security checks a filter on every row a statement reads or writes, so a filter
    (a) that searches a large table (:data:`LARGE_TABLE_ROWS`) only by columns no index leads
    with makes every such statement scan that table, and (b) that calls a function per row
    which could run once per statement (the compiler makes identity calls with constant
    arguments, and a cast of one, InitPlans; nothing else) pays that call on every row.
    Located at the filter in the policy; never fatal.
    """
    filters = _filters(policy)
    if not filters:
        return ()
    tables = sorted({r.table for _, _, reads in filters for r in reads.relations})
    names = sorted({c.function.rsplit(".", 1)[-1] for _, _, reads in filters
                    for c in reads.calls if not c.identity_argument})
    with without_jit(conn), conn.cursor() as cur:
        cur.execute(_catalog_sql("filter_tables"),
                    ([t.schema for t in tables], [t.name for t in tables]))
        live = {TableName(s, n): (float(rows), set(leading))
                for s, n, rows, leading in cur.fetchall()}
        cur.execute(_catalog_sql("function_volatility"), (names,))
        folded = {str(row[0]) for row in cur.fetchall()}
    warnings: list[Problem] = []
    for group, table, reads in filters:
        where = policy.where(f"groups.{group}.rows.{table}")
        seen: set[TableName] = set()
        for relation in reads.relations:
            rows, leading = live.get(relation.table, (-1.0, set()))
            if (rows < LARGE_TABLE_ROWS or not relation.searched
                    or relation.searched & leading or relation.table in seen):
                continue
            seen.add(relation.table)
            columns = ", ".join(sorted(relation.searched))
            warnings.append(Problem(where, (
                f"the row filter of group {group} on {table} searches {relation.table} "
                f"(about {rows:,.0f} rows) by {columns}, and no index of {relation.table} "
                f"starts with {'it' if len(relation.searched) == 1 else 'any of them'}: every "
                f"statement that checks the filter scans the table. Create one, e.g. "
                f"CREATE INDEX ON {relation.table} ({sorted(relation.searched)[0]}).")))
        for call in dict.fromkeys(reads.calls):
            builtin = call.function.count(".") == 0 or call.function.startswith("pg_catalog.")
            name = call.function.rsplit(".", 1)[-1]
            if call.identity_argument:
                why = ("its argument is read from the row, so it cannot run once per "
                       "statement: name the claim with a constant")
            elif call.of_identity or not builtin or name not in folded:
                why = (f"its arguments are the same for every row: write (SELECT {call.text}) "
                       "to have it run once per statement")
            else:
                continue  # immutable of constants: folded when planned
            warnings.append(Problem(where, (
                f"the row filter of group {group} on {table} calls {call.text} once for every "
                f"row it checks; {why}.")))
    return tuple(warnings)


def _catalog_sql(name: str) -> bytes:
    return (sql_dir() / "catalog" / f"{name}.sql").read_bytes()
