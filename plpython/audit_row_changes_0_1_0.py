# policyc.audit_row_changes() as runtime 0.1.0 shipped it (frozen: later runtimes replace the
# function with plpython/audit_row_changes.py). Statement-level audit trigger body (PL/Python).
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

    text = (
        "INSERT INTO audit.row_changes "
        "(table_name, operation, txid, session_id, agent, db_user, old_row, new_row) "
        "SELECT $1, $2, pg_catalog.pg_current_xact_id(), (SELECT policyc.session_id()), "
        "(SELECT policyc.agent()), session_user, " + hashed("o") + ", " + hashed("n") + " "
        "FROM (" + source + ") c LEFT JOIN policyc.hmac_key k ON k.id = 1"
    )
    table_name = "%s.%s" % (TD["table_schema"], TD["table_name"])
    cached = (text, table_name)
    SD[cache_key] = cached

text, table_name = cached
plan = plpy.prepare(text, ["text", "text"])
plpy.execute(plan, [table_name, event])
return None
