"""Compile a policy (plus a catalog snapshot) into the ordered objects apply manages.

Pure: no I/O. One function per object family; each returns DesiredObjects whose SQL comes from
the templates in sql/templates.  Problems that need the live database to see (a missing table
or column, a mask that does not fit a column type) are collected and raised together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from policyc import RUNTIME_VERSION, runtime
from policyc.catalog import (
    MANAGED_ROLE_COMMENT,
    RUNTIME_ROLES,
    Catalog,
    Table,
    revoke_statement,
)
from policyc.compiler.masks import MaskTypeError, mask_expression
from policyc.compiler.objects import Compiled, DesiredObject
from policyc.compiler.render import Template, ident
from policyc.compiler.rowfilters import normalize, policy_sql
from policyc.errors import CatalogError
from policyc.policy.model import ALL_COLUMNS, Columns, Group, Policy, TableName

__all__ = ["Compiled", "DesiredObject", "compile_policy", "policy_tables"]


def policy_tables(policy: Policy) -> set[TableName]:
    """Every table the policy names: PHI tables and every group's read/write tables."""
    names: set[TableName] = set(policy.phi)
    for group in policy.groups:
        names.update(group.tables())
    return names


def audited_tables(policy: Policy) -> set[TableName]:
    """Tables that get audit triggers: those with PHI or that any group writes."""
    names: set[TableName] = set(policy.phi)
    for group in policy.groups:
        names.update(group.write)
    return names


class _Problems:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.policy.where(key)}: {message}")


def _resolve(columns: Columns, table: Table) -> tuple[str, ...]:
    if columns is ALL_COLUMNS:
        return table.column_names
    assert isinstance(columns, tuple)
    return columns


def _runtime_objects(policy: Policy, catalog: Catalog) -> list[DesiredObject]:
    objects = []
    for role in dict.fromkeys((*RUNTIME_ROLES, policy.proxy.service_role)):
        objects.append(
            DesiredObject(
                key=f"runtime-role:{role}",
                family="roles",
                create=Template("runtime_roles.sql.j2", role=role),
                drop=(),  # shared with other databases: never dropped by one policy
                semantic={"role": role},
                adopt_existing=True,
            )
        )
    objects.append(
        DesiredObject(
            key="runtime",
            family="runtime",
            create=(),
            drop=(),
            semantic={"version": RUNTIME_VERSION},
            hash_extra=runtime.fingerprint(),
        )
    )
    return objects


TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
"""The timeouts a policy may set on a group role (``limits``); those it does not set are the
DBA's: apply neither sets nor resets them, and plan does not report them as drift."""


def unmanaged_timeouts(group: Group) -> tuple[str, ...]:
    """The timeouts the group's policy leaves to the DBA."""
    managed = group.limits.timeouts()
    return tuple(name for name in TIMEOUT_SETTINGS if name not in managed)


def group_role_settings(group: Group) -> dict[str, Any]:
    """The group role template's limits: CONNECTION LIMIT (-1: none) and the timeouts to set
    (``'Ns'``)."""
    limits = group.limits
    return {
        "connection_limit": limits.connections if limits.connections is not None else -1,
        "timeouts": [(name, f"{seconds}s") for name, seconds in limits.timeouts().items()],
    }


def _kept_timeouts(group: Group, catalog: Catalog) -> str:
    """The timeouts an update of the group's role leaves as they are: those the policy does
    not set, unless the last apply set them (then they were the policy's, and go)."""
    entry = catalog.ledger.get(f"role:{group.name}")
    before = set(entry.semantic.get("timeouts", ())) if entry is not None else set()
    return ",".join(name for name in unmanaged_timeouts(group) if name not in before)


def _group_objects(
    policy: Policy, catalog: Catalog, group: Group, problems: _Problems
) -> list[DesiredObject]:
    role = group.name
    schema = group.name
    comment = MANAGED_ROLE_COMMENT.format(group=group.name, database=catalog.database)
    existing = catalog.roles.get(role)
    managed_elsewhere = existing is not None and existing.comment != comment
    if managed_elsewhere and f"role:{role}" not in catalog.ledger:
        problems.add(
            f"groups.{group.name}",
            f"role {role} already exists and is not a policyc group of database "
            f"{catalog.database}; rename the group or drop the role",
        )
    context = {
        "role": role,
        "schema": schema,
        "comment": comment,
        "service_role": policy.proxy.service_role,
    }
    role_context = {**context, **group_role_settings(group)}
    objects = [
        DesiredObject(
            key=f"role:{role}",
            family="roles",
            create=Template("group_role.sql.j2", create=True, **role_context),
            # (only the create SQL is hashed: what the update keeps may depend on the ledger)
            update=Template("group_role.sql.j2", create=False,
                            keep=_kept_timeouts(group, catalog), **role_context),
            drop=Template("group_role_drop.sql.j2", role=role),
            semantic={"login": True, "group": group.name,
                      "timeouts": sorted(group.limits.timeouts())},
        ),
        DesiredObject(
            key=f"schema:{schema}",
            family="grants",
            create=Template("group_schema.sql.j2", create=True, **context),
            update=Template("group_schema.sql.j2", create=False, **context),
            drop=Template("group_schema_drop.sql.j2", schema=schema),
            semantic={"usage": [schema, "policyc"]},
        ),
    ]
    seen_views: dict[str, TableName] = {}
    for table_name in group.tables():
        table = catalog.tables.get(table_name)
        if table is None:
            continue  # reported once by compile_policy
        if table_name.name in seen_views:
            problems.add(
                f"groups.{group.name}",
                f"tables {seen_views[table_name.name]} and {table_name} would both become "
                f"view {schema}.{table_name.name}; a group can reach only one table per name",
            )
            continue
        seen_views[table_name.name] = table_name
        view = _view_object(policy, group, table, problems)
        if view is not None:
            objects.append(view)
    expected = {
        revoke_statement(role, "USAGE", "SEQUENCE", schema, name, None)
        for obj in objects if obj.kind == "view"
        for schema, _, name in (s.partition(".") for s in obj.semantic.get("sequences", []))
    }
    extra = tuple(r for r in catalog.extra_privileges.get(role, ()) if r not in expected)
    objects.append(
        DesiredObject(
            key=f"privileges:{role}",
            family="grants",
            create=extra,
            drop=(),
            semantic={"extra": []},
        )
    )
    return objects


def _check_columns(
    problems: _Problems, key: str, table: Table, columns: Iterable[str]
) -> list[str]:
    good = []
    for column in columns:
        if table.column(column) is None:
            problems.add(key, f"column {column} does not exist in table {table.name}")
        else:
            good.append(column)
    return good


def _row_name(table: Table) -> str:
    """How the view's SQL names a row of its base table: the table's own (unqualified) name.

    The view reads the base table without an alias, so the row filter's text, written against
    the table by its own name (``claims.visit_id``, even ``public.claims.visit_id``) as the
    row-security policy reads it, means the same in the view's WHERE clause; the masks' column
    references use this same name.
    """
    return ident(table.name.name)


def _view_filter(group: Group, table: Table) -> str | None:
    """The group's row filter of the table, as its row-security policy has it, for the view's
    WHERE clause: the planner then estimates the rows the group sees (the policy's
    ``CURRENT_USER <> group OR filter`` hides the filter from estimates) and can use an index.
    Row security stays the fence; this adds the same predicate, so no group sees or writes
    anything else.  A filter that does not parse is reported by the row-security object."""
    text = group.rows.get(table.name)
    if text is None:
        return None
    try:
        return policy_sql(text, table.name.name)
    except ValueError:
        return None


def _view_object(
    policy: Policy, group: Group, table: Table, problems: _Problems
) -> DesiredObject | None:
    base = f"groups.{group.name}"
    read_cols = set()
    if table.name in group.read:
        read_cols = set(
            _check_columns(problems, f"{base}.read.{table.name}", table,
                           _resolve(group.read[table.name], table))
        )
    grant = group.write.get(table.name)
    insert_cols: list[str] = []
    update_cols: list[str] = []
    delete = False
    if grant is not None:
        insert_cols = _check_columns(
            problems, f"{base}.write.{table.name}.insert", table, _resolve(grant.insert, table)
        )
        update_cols = _check_columns(
            problems, f"{base}.write.{table.name}.update", table, _resolve(grant.update, table)
        )
        delete = grant.delete
    unmasked = {ref.column for ref in group.unmask if ref.table == table.name}
    in_view = read_cols | set(insert_cols) | set(update_cols)
    phi = policy.phi.get(table.name, {})
    row_name = _row_name(table)
    columns = []
    masks: dict[str, str | None] = {}
    for column in table.columns:
        if column.name not in in_view:
            continue
        ref = f"{row_name}.{ident(column.name)}"
        mask = phi.get(column.name)
        expression = ref
        if mask is not None and column.name in read_cols and column.name not in unmasked:
            if column.name in insert_cols or column.name in update_cols:
                problems.add(
                    f"{base}.write.{table.name}",
                    f"group {group.name} writes PHI column {table.name}.{column.name} that it "
                    "reads masked; unmask it or stop writing it",
                )
            try:
                expression = mask_expression(mask, column, ref)
            except MaskTypeError as exc:
                problems.add(f"phi.{table.name}.{column.name}", str(exc))
        if column.name in read_cols:
            masks[column.name] = mask.value if (mask and column.name not in unmasked) else None
        columns.append({"name": column.name, "expression": expression})
    order = [c.name for c in table.columns]
    select = [c for c in order if c in read_cols]
    # a serial default runs nextval() as the inserting role, which needs USAGE on the sequence
    sequences = sorted(
        {".".join(c.sequence) for c in table.columns
         if c.sequence and c.name not in insert_cols}
    ) if insert_cols else []
    context = {
        "schema": group.name,
        "view": table.name.name,
        "table": table.name,
        "role": group.name,
        "columns": columns,
        "select": select,
        "insert": [c for c in order if c in insert_cols],
        "update": [c for c in order if c in update_cols],
        "delete": delete,
        "sequences": sequences,
        "where": _view_filter(group, table),
        "comment": f"policyc: {table.name} as group {group.name} sees it (masked, filtered)",
    }
    return DesiredObject(
        key=f"view:{group.name}:{table.name.name}",
        family="views",
        create=Template("view.sql.j2", **context),
        drop=Template("view_drop.sql.j2", schema=group.name, view=table.name.name),
        semantic={
            "table": str(table.name),
            "read": masks,
            "insert": context["insert"],
            "update": context["update"],
            "delete": delete,
            "sequences": sequences,
        },
    )


def _base_grant_object(policy: Policy, table: Table) -> DesiredObject:
    insert: set[str] = set()
    update: set[str] = set()
    delete = False
    for group in policy.groups:
        grant = group.write.get(table.name)
        if grant is None:
            continue
        insert.update(c for c in _resolve(grant.insert, table) if table.column(c))
        update.update(c for c in _resolve(grant.update, table) if table.column(c))
        delete = delete or grant.delete
    order = table.column_names
    context = {
        "table": table.name,
        "insert": [c for c in order if c in insert],
        "update": [c for c in order if c in update],
        "delete": delete,
    }
    return DesiredObject(
        key=f"base-grants:{table.name}",
        family="grants",
        create=Template("base_grants.sql.j2", **context),
        drop=Template("base_grants_drop.sql.j2", table=table.name),
        semantic={"select": True, **{k: v for k, v in context.items() if k != "table"}},
    )


def _rls_object(
    policy: Policy, catalog: Catalog, table: Table, problems: _Problems
) -> DesiredObject | None:
    filters = []
    for group in policy.groups:
        text = group.rows.get(table.name)
        if text is None:
            continue
        try:
            expression = normalize(text)
        except ValueError as exc:
            problems.add(f"groups.{group.name}.rows.{table.name}", str(exc))
            continue
        filters.append(
            {"policy": f"policyc_{group.name}", "role": group.name, "expression": expression,
             "sql": policy_sql(text, table.name.name), "group": group.name}
        )
    key = f"rls:{table.name}"
    previous = catalog.ledger.get(key)
    if previous is not None:
        passthrough = bool(previous.semantic.get("passthrough"))
    else:
        passthrough = not table.row_security
    if not filters and not (table.row_security and previous is None):
        return None
    policies = [f["policy"] for f in filters]
    policies.append("policyc_passthrough" if passthrough else "policyc_views")
    return DesiredObject(
        key=key,
        family="row-security",
        create=Template(
            "row_security.sql.j2", table=table.name, filters=filters, passthrough=passthrough
        ),
        drop=Template(
            "row_security_drop.sql.j2", table=table.name, policies=policies,
            passthrough=passthrough,
        ),
        semantic={
            "filters": {f["group"]: f["expression"] for f in filters},
            "passthrough": passthrough,
        },
    )


def _trigger_object(policy: Policy, table: Table) -> DesiredObject:
    phi = sorted(c for c in policy.phi.get(table.name, {}) if table.column(c))
    context = {
        "table": table.name,
        "pk": json.dumps(list(table.primary_key)),
        "phi": json.dumps(phi),
    }
    drop = Template("audit_triggers_drop.sql.j2", table=table.name)
    return DesiredObject(
        key=f"trigger:{table.name}",
        family="triggers",
        create=Template("audit_triggers.sql.j2", **context),
        drop=drop,
        semantic={"phi": phi, "pk": list(table.primary_key)},
    )


def _approvers_object(
    policy: Policy, catalog: Catalog, problems: _Problems
) -> DesiredObject:
    """Approver roles (created NOLOGIN when missing) with EXECUTE on audit.approve / deny."""
    roles = sorted(policy.approvals.approvers)
    reserved = {*RUNTIME_ROLES, policy.proxy.service_role}
    for role in roles:
        existing = catalog.roles.get(role)
        if role in reserved:
            problems.add(
                "approvals.approvers",
                f"approver role {role} is a policyc runtime role: the proxy and the runtime "
                "must never approve held statements",
            )
        elif existing is not None and (existing.comment or "").startswith("policyc group "):
            problems.add(
                "approvals.approvers",
                f"approver role {role} is a policyc agent group role ({existing.comment}): "
                "agents must never approve held statements",
            )
    return DesiredObject(
        key="approvers",
        family="grants",
        create=Template("approvers.sql.j2", roles=roles),
        drop=Template("approvers_drop.sql.j2", roles=roles),
        semantic={"approvers": roles},
    )


def compile_policy(policy: Policy, catalog: Catalog) -> Compiled:
    """The objects apply would make, in execution order; raises CatalogError with every problem."""
    problems = _Problems(policy)
    if policy.database is not None and policy.database != catalog.database:
        problems.add(
            "database",
            f"policy is for database {policy.database} but the connection is to "
            f"{catalog.database}",
        )
    for name in sorted(policy_tables(policy)):
        table = catalog.tables.get(name)
        if table is None:
            problems.add(_table_key(policy, name), f"table {name} does not exist")
            continue
        if table.kind not in ("r", "p"):
            problems.add(_table_key(policy, name), f"{name} is not a table (relkind {table.kind})")
        if table.public_privileges:
            problems.add(
                _table_key(policy, name),
                f"PUBLIC holds {', '.join(table.public_privileges)} on {name}, which would let "
                f"every group bypass its masks: REVOKE ALL ON {name} FROM PUBLIC",
            )
    for table_name, columns in sorted(policy.phi.items()):
        table = catalog.tables.get(table_name)
        if table is not None:
            _check_columns(problems, f"phi.{table_name}", table, sorted(columns))
    objects: list[DesiredObject] = _runtime_objects(policy, catalog)
    for group in policy.groups:
        objects.extend(_group_objects(policy, catalog, group, problems))
    reached = {name for g in policy.groups for name in (*g.read, *g.write)}
    for name in sorted(policy_tables(policy)):
        table = catalog.tables.get(name)
        if table is None:
            continue
        if name in reached:
            objects.append(_base_grant_object(policy, table))
        rls = _rls_object(policy, catalog, table, problems)
        if rls is not None:
            objects.append(rls)
    for name in sorted(audited_tables(policy)):
        table = catalog.tables.get(name)
        if table is not None and table.kind in ("r", "p"):
            objects.append(_trigger_object(policy, table))
    if policy.approvals.approvers:
        objects.append(_approvers_object(policy, catalog, problems))
    if problems.items:
        raise CatalogError(problems.items)
    objects.sort(key=lambda o: o.order)
    return Compiled(tuple(objects))


def _table_key(policy: Policy, name: TableName) -> str:
    if name in policy.phi:
        return f"phi.{name}"
    for group in policy.groups:
        if name in group.read:
            return f"groups.{group.name}.read.{name}"
        if name in group.write:
            return f"groups.{group.name}.write.{name}"
    return str(name)
