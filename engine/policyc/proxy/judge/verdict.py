"""Policy verdicts over a classified statement: allowed, masked, blocked or needs_approval.

Pure: a :class:`~policyc.proxy.judge.statement.StatementInfo`, the agent's group and the policy in,
a :class:`Verdict` out.  The proxy is the second fence (the database's roles, grants, views
and row security are the first), so this module blocks what no agent may attempt, holds what
the group wants a human to see, and otherwise lets the database decide.  Unknown statement
types and session settings are blocked (fail closed).  Reasons name rules, never values from
the SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from policyc.errors import InsufficientPrivilege
from policyc.policy.model import AllColumns, ColumnRef, Group, Mask, Policy, TableName
from policyc.proxy.judge.registry import AGENT_CALLABLE, Registry, load_registry
from policyc.proxy.judge.registry.rules import ALWAYS_BLOCKED
from policyc.proxy.judge.settings import setting_reason
from policyc.proxy.judge.statement import ANY_TABLE, UNQUALIFIED, Classification, StatementInfo
from policyc.vocab import IDENTITY_SCHEMA, IdentityFunction, Outcome

#: SQLSTATE for every policy block: insufficient_privilege.
BLOCKED_SQLSTATE: Final = InsufficientPrivilege.sqlstate


@dataclass(frozen=True)
class Verdict:
    """What the proxy does with one statement, and what it touches (for the audit record).

    ``tables`` are resolved to the policy's base tables where possible (unqualified names
    that match none stay with schema ``""``); ``phi_columns`` are every PHI column the
    statement reads, masked or not; ``approval_shapes`` are the risky shapes that made it
    need approval.
    """

    outcome: Outcome
    reason: str | None
    sqlstate: str | None
    phi_columns: frozenset[ColumnRef]
    tables: frozenset[TableName]
    approval_shapes: frozenset[str] = frozenset()


_BLOCKED_KINDS: Final = {
    "other": "this statement type is not supported through the proxy",
    "vacuum": "VACUUM and ANALYZE are not allowed; maintenance belongs to the DBA",
    "call": "CALL of procedures is not allowed",
    "role": "changing the session role or authorization is not allowed",
}

_PRINTABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")

#: policyc's own functions an agent may call: the verified identity of its session.
POLICYC_FUNCTIONS: Final = frozenset(IdentityFunction)
#: Functions judged by their arguments elsewhere (SET-like), not by their registry class.
_BY_ARGUMENTS: Final = frozenset({"set_config"})
#: Schemas of the system catalog: relations there are judged by the registry's allow-list.
CATALOG_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema"})
#: PostgreSQL major whose registry judges statements when the caller names none.
DEFAULT_MAJOR: Final = 15


# --------------------------------------------------------------------------- group index


@dataclass(frozen=True)
class _Index:
    """Per (group, policy) lookups, built once: table names → base tables, PHI, unmasked."""

    group: Group
    policy: Policy
    known: frozenset[TableName]
    by_name: Mapping[str, frozenset[TableName]]
    phi: Mapping[TableName, Mapping[str, Mask]]  # PHI columns the group's views carry
    all_phi: Mapping[TableName, Mapping[str, Mask]]  # every PHI column of the base tables
    unmasked: frozenset[ColumnRef]


_INDEXES: dict[tuple[int, int], _Index] = {}
_MAX_INDEXES: Final = 256


def _index(group: Group, policy: Policy) -> _Index:
    key = (id(group), id(policy))
    found = _INDEXES.get(key)
    if found is not None and found.group is group and found.policy is policy:
        return found
    known = frozenset(group.tables())
    by_name: dict[str, set[TableName]] = {}
    for table in known:
        by_name.setdefault(table.name, set()).add(table)
    index = _Index(
        group=group,
        policy=policy,
        known=known,
        by_name={name: frozenset(tables) for name, tables in by_name.items()},
        phi=_group_phi(group, policy),
        all_phi=policy.phi,
        unmasked=frozenset(group.unmask),
    )
    if len(_INDEXES) >= _MAX_INDEXES:
        _INDEXES.clear()
    _INDEXES[key] = index
    return index


def _group_phi(group: Group, policy: Policy) -> dict[TableName, Mapping[str, Mask]]:
    """The policy's PHI columns as the group's views have them: a view carries the columns
    the group reads or writes, so a statement of the group can touch only those (billing's
    ``SELECT * FROM patients`` reads no ``email``: its view has none).  Tables outside the
    group keep all their PHI (and so does a base table named by its own schema: see
    :func:`_phi_columns`)."""
    out: dict[TableName, Mapping[str, Mask]] = dict(policy.phi)
    for table in group.tables():
        masks = policy.phi.get(table)
        if not masks:
            continue
        grant = group.write.get(table)
        lists = [group.read.get(table, ()), *((grant.insert, grant.update) if grant else ())]
        if any(isinstance(columns, AllColumns) for columns in lists):
            continue
        carried = {column for columns in lists for column in columns}
        out[table] = {column: mask for column, mask in masks.items() if column in carried}
    return out


def _resolve(table: TableName, index: _Index) -> frozenset[TableName]:
    """The group's base tables a written name can stand for; empty when none is known.

    The agent's search_path is its group's view schema, whose views carry the base tables'
    names, so an unqualified name means the group table of that name.  A qualified name the
    policy does not know (the view schema itself, say) is matched by name too: PHI is
    over-reported rather than missed.
    """
    if table.schema != UNQUALIFIED and (table in index.known or table in index.phi):
        return frozenset({table})
    return index.by_name.get(table.name, frozenset())


def resolve_tables(info: StatementInfo, group: Group, policy: Policy) -> frozenset[TableName]:
    """The statement's tables as base tables; unknown names are kept as written.

    Unqualified names of the statement's own CTEs are dropped unless they also name a
    group table (then the table is kept: over-report, never miss).
    """
    return _resolve_all(info, _index(group, policy))


def _resolve_all(info: StatementInfo, index: _Index) -> frozenset[TableName]:
    out: set[TableName] = set()
    for table in info.tables:
        resolved = _resolve(table, index)
        if resolved:
            out |= resolved
        elif not (table.schema == UNQUALIFIED and table.name in info.ctes):
            out.add(table)
    return frozenset(out)


def phi_columns(info: StatementInfo, group: Group, policy: Policy) -> frozenset[ColumnRef]:
    """Every PHI column the statement reads; ``*`` on a PHI table touches all its PHI."""
    index = _index(group, policy)
    return _phi_columns(info, index, _resolve_all(info, index))


def _phi_columns(
    info: StatementInfo, index: _Index, tables: frozenset[TableName]
) -> frozenset[ColumnRef]:
    # a base table named by its own schema (refused by the judge; recorded all the same)
    # could give every PHI column it has, not only those its group's view carries
    direct = {t for t in info.tables
              if t.schema not in (UNQUALIFIED, index.group.name) and t in index.all_phi}
    phi = index.phi
    candidates = [t for t in tables if t in phi]
    if not candidates:
        return frozenset()
    out: set[ColumnRef] = set()
    for table, column in info.columns:
        # A qualifier that is no known table (a CTE, a subquery alias) could be any.
        targets: Iterable[TableName] = (
            candidates if table == ANY_TABLE else (_resolve(table, index) or candidates)
        )
        for target in targets:
            masks = (index.all_phi if target in direct else phi).get(target)
            if not masks:
                continue
            if column == "*":
                out.update(ColumnRef(target, name) for name in masks)
            elif column in masks:
                out.add(ColumnRef(target, column))
    return frozenset(out)


# --------------------------------------------------------------------------- verdicts


def judge_statement(info: StatementInfo, group: Group, policy: Policy,
           registry: Registry | None = None) -> Verdict:
    """The verdict for one statement run by an agent of ``group``; ``registry`` is the vetted
    list of catalog functions and relations of the server's PostgreSQL major."""
    index = _index(group, policy)
    tables = _resolve_all(info, index)
    touched = _phi_columns(info, index, tables)

    def verdict(
        outcome: Outcome, reason: str | None, shapes: frozenset[str] = frozenset()
    ) -> Verdict:
        sqlstate = BLOCKED_SQLSTATE if outcome == Outcome.BLOCKED else None
        return Verdict(outcome, reason, sqlstate, touched, tables, shapes)

    blocked = _blocked_reason(info, group)
    if blocked is None and info.kind == "explain" and not tables.isdisjoint(group.rows):
        blocked = ("EXPLAIN of a table this group sees through a row filter is not allowed: "
                   "the planner's estimates and filters describe every tenant's rows")
    if blocked is None:
        blocked = catalog_reason(info, group, registry or load_registry(DEFAULT_MAJOR))
    if blocked is not None:
        return verdict(Outcome.BLOCKED, blocked)
    listed = info.risky & frozenset(group.approval.statements)
    if listed and info.kind in ("prepare", "declare_cursor"):
        # an approval covers one run of the exact text; a name would run it again and again
        return verdict(Outcome.BLOCKED, (
            f"statement shape ({', '.join(sorted(listed))}) needs approval for group "
            f"{group.name}; PREPARE and DECLARE cannot be approved: run the statement itself"))
    if listed:
        shapes = ", ".join(sorted(listed))
        return verdict(
            Outcome.NEEDS_APPROVAL,
            f"statement shape ({shapes}) needs approval for group {group.name}",
            listed,
        )
    if touched - index.unmasked:
        return verdict(Outcome.MASKED, "reads PHI columns that are masked for this group")
    return verdict(Outcome.ALLOWED, None)


def _blocked_reason(info: StatementInfo, group: Group) -> str | None:
    risky = info.risky
    for shape, reason in ALWAYS_BLOCKED:
        if shape in risky:
            return reason
    kind_reason = _BLOCKED_KINDS.get(info.kind)
    if kind_reason is not None:
        return kind_reason
    approvable = group.approval.statements
    if "do_block" in risky and not group.allow_do:
        return f"DO blocks are not allowed for group {group.name}"
    if "ddl" in risky and "ddl" not in approvable:
        return (
            "DDL (CREATE, ALTER, DROP, GRANT, CREATE TEMP TABLE, SELECT INTO and similar) is "
            f"not allowed for group {group.name} unless its approval rules list ddl"
        )
    if info.kind in {"set", "reset", "show"}:
        return _setting_reason(info, group)
    config_reason = _config_calls_reason(info, group)
    if config_reason is not None:
        return config_reason
    if info.kind in {"listen", "notify"} and (info.name or "").lower().startswith("policyc"):
        return "the policyc_* notification channels belong to the proxy and approvers"
    if "pg_notify" in info.functions:
        return "pg_notify() is not allowed (use NOTIFY on your own channels)"
    return None


def _setting_reason(info: StatementInfo, group: Group) -> str | None:
    if info.kind == "show":
        # SHOW reads what current_setting() and pg_settings, both callable, read: the
        # server's own privileges decide which settings a role may see
        return None
    verb = "RESET" if info.kind == "reset" else "SET"
    return setting_reason(info.setting or "", info.values, group, verb=verb)


def _config_calls_reason(info: StatementInfo, group: Group) -> str | None:
    """set_config(name, value, ...) is judged like SET of that setting to that value (its
    value is one list string, as startup options are)."""
    for setting, value in info.config_calls:
        reason = setting_reason(setting, (value,), group, verb="set_config", listed=True)
        if reason is not None:
            return reason
    return None


def catalog_reason(info: StatementInfo, group: Group, registry: Registry) -> str | None:
    """Why the statement may not call one of its functions or read one of its catalog
    relations (None: it may).  An allow-list: a pg_catalog function (unqualified names
    resolve there first: agents cannot create functions, and their search_path is their
    view schema) must be of a class agents may call, or listed in the group's
    ``functions``; policyc's identity functions are allowed; any other function only when
    the group lists it.  An unknown name is refused, so a new PostgreSQL release cannot add
    a function nobody judged.  Catalog relations (pg_catalog, information_schema, and
    unqualified names of pg_catalog relations, which pg_catalog's place first in the search
    path resolves there) must be on the registry's list of readable ones; a relation named in
    any other schema than the group's own (or pg_temp) is refused."""
    listed = group.functions
    # DDL runs only once a human approved it (or never): the functions it names or defines
    # are what the approver saw
    calls = () if info.kind == "ddl" else sorted(info.calls)
    for schema, name in calls:
        if name in _BY_ARGUMENTS and schema in (UNQUALIFIED, "pg_catalog"):
            continue
        if schema == IDENTITY_SCHEMA and name in POLICYC_FUNCTIONS:
            continue
        if schema in (UNQUALIFIED, "pg_catalog"):
            cls = registry.function_class(name)
            if cls in AGENT_CALLABLE or f"pg_catalog.{name}" in listed:
                continue
            what = "is not a function the proxy knows" if cls is None else \
                f"is {_with_article(cls.value.replace('_', ' '))} function"
            return (f"function {_shown(name)} {what}; agents may call only vetted functions "
                    f"and those group {group.name} lists under functions")
        if f"{schema}.{name}" in listed:
            continue
        return (f"function {_shown(schema)}.{_shown(name)} is not listed under functions for "
                f"group {group.name}")
    for schema in sorted(info.operator_schemas - {"pg_catalog"}):
        # an operator runs its function: outside pg_catalog, one nobody vetted for agents
        return f"operators of schema {_shown(schema)} are not allowed; use pg_catalog's"
    for table in sorted(info.targets):
        # an agent writes only its group's views (and its own temporary tables): a write to a
        # catalog relation is how pg_settings' update rule calls set_config unseen
        if table.schema not in (group.name, "pg_temp") and (
                table.schema != UNQUALIFIED or table.name in registry.catalog_names):
            return (f"writing to relation {_shown(table.schema or 'pg_catalog')}."
                    f"{_shown(table.name)} is not allowed; agents write their group's views "
                    "by their plain names")
    for table in sorted(info.tables):
        schema = table.schema
        if schema == UNQUALIFIED:
            if table.name not in registry.catalog_names:
                continue
            schema = "pg_catalog"
        if schema not in CATALOG_SCHEMAS:
            if schema in (group.name, "pg_temp"):
                continue
            # base tables, other groups' views, the audit schema, an extension's views
            # (pg_stat_statements): an agent reads its own views and vetted catalog relations
            return (f"relation {_shown(schema)}.{_shown(table.name)} is outside group "
                    f"{group.name}'s view schema; agents read their views by their plain names")
        if registry.relation_allowed(schema, table.name) is False and \
                f"{schema}.{table.name}" not in group.catalog:
            return (f"catalog relation {schema}.{_shown(table.name)} is not readable by agents "
                    "(other sessions' activity, statistics or security rules) unless the "
                    f"policy lists it under groups.{group.name}.catalog")
    return None


def _with_article(words: str) -> str:
    """``activity`` → ``an activity``, ``pure`` → ``a pure``."""
    return f"{'an' if words[:1] in 'aeiou' else 'a'} {words}"


def _shown(name: str) -> str:
    return name if _PRINTABLE_NAME.match(name) else "(a name not shown)"


def judge_all(classification: Classification, group: Group, policy: Policy,
               registry: Registry | None = None) -> tuple[Verdict, ...]:
    """One verdict per statement; an unclassifiable string gets one blocked verdict."""
    if classification.error is not None:
        return (
            Verdict(
                Outcome.BLOCKED,
                classification.error,
                classification.error_sqlstate or BLOCKED_SQLSTATE,
                frozenset(),
                frozenset(),
            ),
        )
    return tuple(judge_statement(info, group, policy, registry)
                 for info in classification.statements)


_SEVERITY: Final[dict[Outcome, int]] = {
    Outcome.ALLOWED: 0,
    Outcome.MASKED: 1,
    Outcome.NEEDS_APPROVAL: 2,
    Outcome.BLOCKED: 3,
}


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a multi-statement string: the strictest one, touching everything.

    A simple-protocol string runs as one implicit transaction, so it is decided as a whole:
    one blocked statement blocks the string, one held statement holds it.
    """
    items = list(verdicts)
    if not items:
        return Verdict(Outcome.ALLOWED, None, None, frozenset(), frozenset())
    worst = max(items, key=lambda v: _SEVERITY[v.outcome])
    phi: frozenset[ColumnRef] = frozenset().union(*(v.phi_columns for v in items))
    tables: frozenset[TableName] = frozenset().union(*(v.tables for v in items))
    shapes: frozenset[str] = frozenset().union(*(v.approval_shapes for v in items))
    return Verdict(worst.outcome, worst.reason, worst.sqlstate, phi, tables, shapes)
