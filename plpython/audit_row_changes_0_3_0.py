# policyc.audit_row_changes(): statement-level audit trigger body (PL/Python).
#
# One call per statement, not per row: the rows come from the trigger's transition tables
# (policyc_old / policyc_new) and land in audit.row_changes through a single set-based INSERT,
# in the same transaction as the change (a rollback leaves no record). PHI columns are replaced
# by keyed HMAC pseudonyms before they are written. Trigger arguments, fixed by `policyc apply`:
#   TD["args"][0]  JSON list of primary-key columns (pairs old/new rows of an UPDATE)
#   TD["args"][1]  JSON list of PHI columns to hash
# The statement text is cached per (table, event) in SD; the plan is prepared per call because
# transition tables only exist while this trigger runs. Everything per row is plain SQL the
# planner can inline (the HMAC is two sha256() calls with the key joined once); the session's
# identity is looked up once per statement (scalar subqueries become InitPlans).
#
# Tamper evidence (runtime 0.3.0): the rows join this backend's chain ("rc:<pid>@<start>"),
# numbered without gaps from audit.chain_heads. The head row is locked (read with a +0
# reservation) before the insert and advanced by the number inserted after it, both in this
# transaction, so a rolled-back statement or savepoint gives its positions back.
import json

event = TD["event"]
cache_key = (TD["relid"], event, TD["args"][0], TD["args"][1])
cached = SD.get(cache_key)
if cached is None:
    pk_columns = json.loads(TD["args"][0])
    if event == "INSERT":
        source = "SELECT NULL::jsonb AS o, to_jsonb(n) AS n FROM policyc_new n"
    elif event == "DELETE":
        source = "SELECT to_jsonb(o) AS o, NULL::jsonb AS n FROM policyc_old o"
    elif pk_columns:
        join = " AND ".join(
            "o.%s = n.%s" % (plpy.quote_ident(c), plpy.quote_ident(c))
            for c in pk_columns
        )
        source = (
            "SELECT to_jsonb(o) AS o, to_jsonb(n) AS n "
            "FROM policyc_old o FULL JOIN policyc_new n ON " + join
        )
    else:
        source = (
            "SELECT to_jsonb(o) AS o, NULL::jsonb AS n FROM policyc_old o "
            "UNION ALL SELECT NULL::jsonb, to_jsonb(n) FROM policyc_new n"
        )
    phi_columns = json.loads(TD["args"][1])

    def hashed(row):
        if not phi_columns:
            return "c.%s" % row
        pairs = ", ".join(
            "%s, policyc.hmac_hex(k.ipad, k.opad, c.%s ->> %s)"
            % (plpy.quote_literal(col), row, plpy.quote_literal(col))
            for col in phi_columns
        )
        return "CASE WHEN c.%s IS NULL THEN NULL ELSE c.%s || jsonb_build_object(%s) END" % (
            row, row, pairs)

    # Ids, times and hashes are computed here, set-based, rather than by a trigger per row:
    # audit.row_change_hash() is the same function audit.verify() recomputes with.
    text = (
        "INSERT INTO audit.row_changes "
        "(id, at, table_name, operation, txid, session_id, agent, db_user, old_row, new_row, "
        "chain, seq, row_hash) OVERRIDING SYSTEM VALUE "
        "SELECT x.*, audit.row_change_hash(x.id, x.at, x.table_name, x.operation, x.txid, "
        "x.session_id, x.agent, x.db_user, x.old_row, x.new_row, x.chain, x.seq) FROM ("
        "SELECT pg_catalog.nextval('audit.row_changes_id_seq'::regclass) AS id, "
        "pg_catalog.now() AS at, $1::text AS table_name, $2::text AS operation, "
        "pg_catalog.pg_current_xact_id() AS txid, (SELECT policyc.session_id()) AS session_id, "
        "(SELECT policyc.agent()) AS agent, session_user AS db_user, "
        + hashed("o") + " AS old_row, " + hashed("n") + " AS new_row, $3::text AS chain, "
        "$4 + pg_catalog.row_number() OVER () - 1 AS seq "
        "FROM (" + source + ") c LEFT JOIN policyc.hmac_key k ON k.id = 1) x"
    )
    table_name = "%s.%s" % (TD["table_schema"], TD["table_name"])
    cached = (text, table_name)
    SD[cache_key] = cached

text, table_name = cached
chain = GD.get("policyc.row_changes.chain")
if chain is None:
    chain = plpy.execute(
        # backend_start needs pg_read_all_stats (apply grants it to policyc_owner); without
        # it, backends that reuse a pid share a chain, still gap-free under the head's lock
        "SELECT 'rc:' || pg_catalog.pg_backend_pid() || '@' || "
        "coalesce(audit._epoch(a.backend_start)::text, 'pid') AS chain "
        "FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a"
    )[0]["chain"]
    GD["policyc.row_changes.chain"] = chain
reserve = SD.get("reserve")
if reserve is None:
    reserve = plpy.prepare("SELECT audit._next_seq($1, $2) AS base", ["text", "bigint"])
    SD["reserve"] = reserve
base = plpy.execute(reserve, [chain, 0])[0]["base"]
plan = plpy.prepare(text, ["text", "text", "text", "bigint"])
inserted = plpy.execute(plan, [table_name, event, chain, base]).nrows()
if inserted:
    plpy.execute(reserve, [chain, inserted])
return None
