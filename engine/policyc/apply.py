"""Apply: the only place that changes the database, in one transaction.

Takes an advisory lock (two applies never interleave), plans inside the transaction, runs the
plan, re-observes every managed object and records it in the ledger, then checks the result
(no group can read a base table) before committing.  Any failure rolls everything back.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from policyc import RUNTIME_VERSION, runtime
from policyc.compiler.render import qname
from policyc.errors import ApplyError
from policyc.plan import Change, Plan, make_plan, observe
from policyc.policy.model import Policy

#: Held for the transaction by apply and by service-password: they never interleave.
LOCK = "SELECT pg_advisory_xact_lock(hashtext('policyc apply'))"


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    executed: int  # statements run (0 for a no-op)


def _install_runtime(conn: psycopg.Connection[Any], plan: Plan) -> int:
    catalog = plan.catalog
    executed = 0
    if catalog.extension_available and (catalog.runtime_version is None or
                                        catalog.runtime_via_extension):
        if catalog.runtime_version is None:
            conn.execute(
                psycopg.sql.SQL("CREATE EXTENSION policyc VERSION {} CASCADE").format(
                    psycopg.sql.Literal(RUNTIME_VERSION)
                )
            )
        else:
            conn.execute(
                psycopg.sql.SQL("ALTER EXTENSION policyc UPDATE TO {}").format(
                    psycopg.sql.Literal(RUNTIME_VERSION)
                )
            )
        executed += 1
        via = "extension"
    else:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        for script in runtime.upgrade_path(catalog.runtime_version):
            conn.execute(runtime.statements_text(script).encode())
            executed += 1
        via = "script"
    # monthly audit partitions (runtime 0.3.0 on): created here, outside the extension script
    if conn.execute("SELECT to_regprocedure('audit.ensure_partitions(timestamptz,timestamptz)')"
                    " IS NOT NULL").fetchone() == (True,):
        conn.execute("SELECT audit.ensure_partitions()")
    key = secrets.token_bytes(32).ljust(64, b"\x00")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    conn.execute(
        "INSERT INTO policyc.hmac_key (id, ipad, opad) VALUES (1, %s, %s) "
        "ON CONFLICT (id) DO NOTHING",
        (ipad, opad),
    )
    conn.execute(
        "INSERT INTO policyc.applied_objects "
        "(object_key, family, desired_hash, observed, semantic, drop_sql) "
        "VALUES ('runtime', 'runtime', %s, %s, %s, '{}') "
        "ON CONFLICT (object_key) DO UPDATE SET desired_hash = excluded.desired_hash, "
        "observed = excluded.observed, semantic = excluded.semantic, applied_at = now()",
        (runtime.fingerprint(), RUNTIME_VERSION,
         Jsonb({"version": RUNTIME_VERSION, "via": via})),
    )
    return executed + 1


def _run(conn: psycopg.Connection[Any], change: Change) -> int:
    for statement in change.statements:
        try:
            conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise ApplyError(
                f"{change.key}: {exc.diag.message_primary or exc} "
                f"(SQLSTATE {exc.sqlstate}) in: {statement[:200]}"
            ) from exc
    return len(change.statements)


def _record(conn: psycopg.Connection[Any], policy: Policy, plan: Plan) -> None:
    """Write every desired object's observed state to the ledger; forget dropped ones."""
    catalog = observe(conn, policy, plan.catalog, refresh=True)
    dropped = [c.key for c in plan.changes if c.action == "drop"]
    if dropped:
        conn.execute("DELETE FROM policyc.applied_objects WHERE object_key = ANY(%s)", (dropped,))
    rows = []
    for obj in plan.compiled.objects:
        if obj.kind in ("runtime", "runtime-role", "privileges"):
            continue
        previous = plan.catalog.ledger.get(obj.key)
        recorded = previous.desired_hash if previous is not None else None
        rows.append(
            (obj.key, obj.family, obj.ledger_hash(recorded),
             catalog.observed.get(obj.key, ""), Jsonb(obj.semantic), list(obj.drop_sql))
        )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO policyc.applied_objects "
            "(object_key, family, desired_hash, observed, semantic, drop_sql) "
            "VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (object_key) DO UPDATE SET family = excluded.family, "
            "desired_hash = excluded.desired_hash, observed = excluded.observed, "
            "semantic = excluded.semantic, drop_sql = excluded.drop_sql, applied_at = now()",
            rows,
        )


_BYPASS = """
SELECT g.name, t.name
  FROM unnest(%s::text[]) AS g(name), unnest(%s::text[]) AS t(name)
 WHERE has_table_privilege(g.name, t.name, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES')
"""


def _verify(conn: psycopg.Connection[Any], policy: Policy, plan: Plan) -> None:
    """Fail closed: after apply, no group may hold any privilege on a base table."""
    groups = [g.name for g in policy.groups]
    tables = [qname(t) for t in plan.catalog.tables]
    with conn.cursor() as cur:
        cur.execute(_BYPASS, (groups, tables))
        leaks = cur.fetchall()
    if leaks:
        raise ApplyError(
            "refusing to commit: "
            + "; ".join(f"group {g} holds a privilege on base table {t}" for g, t in leaks)
        )


def apply_policy(conn: psycopg.Connection[Any], policy: Policy) -> ApplyResult:
    """Bring the database in line with the policy, atomically. ``conn`` must not be in a
    transaction; it is left outside one."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ApplyError("apply needs a connection outside any transaction")
    with conn.transaction():
        conn.execute(LOCK)
        plan = make_plan(conn, policy)
        if plan.empty:
            return ApplyResult(plan, 0)
        if not plan.catalog.is_superuser:
            raise ApplyError(
                "apply must run as a superuser: it creates roles, PL/Python functions and "
                "row-security policies"
            )
        executed = 0
        for change in plan.changes:
            if change.kind == "runtime":
                executed += _install_runtime(conn, plan)
            else:
                executed += _run(conn, change)
        _record(conn, policy, plan)
        _verify(conn, policy, plan)
    return ApplyResult(plan, executed)
