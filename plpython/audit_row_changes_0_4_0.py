# policyc.audit_row_changes(): statement-level audit trigger body (PL/Python).
#
# One call per statement, not per row: the rows come from the trigger's transition tables
# (policyc_old / policyc_new) and land in audit.row_changes through a single set-based INSERT,
# in the same transaction as the change (a rollback leaves no record). PHI columns are replaced
# by keyed HMAC pseudonyms before they are written. Trigger arguments, fixed by `policyc apply`:
#   TD["args"][0]  JSON list of primary-key columns (pairs old/new rows of an UPDATE)
#   TD["args"][1]  JSON list of PHI columns to hash
#
# Runtime 0.4.0 writes exactly what 0.3.0 wrote (same rows, same jsonb, same hashes), cheaper
# (and right for tables with a column named n or o, which 0.3.0 recorded as that column's value
# instead of the row: its aliases are now prefixed and never meet a column name):
# * each row's jsonb is built once, column by column (jsonb_build_object of the table's
#   columns, PHI columns given their HMAC directly) instead of to_jsonb(row) || {hashes}, which
#   cost a second jsonb build and, with the row referenced once per PHI column, a to_jsonb per
#   reference;
# * an UPDATE hashes a PHI value of the old row only when it differs from the new row's (same
#   text, same HMAC);
# * row_number() numbers the narrow source rows, not the finished ones;
# * the statement is planned once per table shape and backend, not once per call (parsing and
#   planning it was most of the trigger's time on a one-row write): the plan is kept in SD,
#   keyed by table, event, arguments and the table's columns (position, name, type, typmod),
#   read from the catalog on every call (one indexed lookup). A column added, dropped, renamed
#   or retyped makes a new key, hence a new plan; the transition tables the plan reads are
#   those of the current call (PL/Python registers them for every call, by the same names);
#   changes to the audit tables or functions it uses invalidate it like any cached plan;
# * the HMAC pads and the session's identity are joined once per statement (one lookup of the
#   identity, where policyc.session_id() and policyc.agent() made one each).
#
# Tamper evidence (runtime 0.3.0 on): the rows join this backend's chain ("rc:<pid>@<start>"),
# numbered without gaps from audit.chain_heads. The head row is locked (read with a +0
# reservation) before the insert and advanced by the number inserted after it, both in this
# transaction, so a rolled-back statement or savepoint gives its positions back.
import json

event = TD["event"]
columns_plan = SD.get("columns")
if columns_plan is None:
    columns_plan = plpy.prepare(
        "SELECT a.attnum, a.attname::text AS name, a.atttypid::int AS type, a.atttypmod "
        "FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        ["oid"],
    )
    SD["columns"] = columns_plan
# The cached plan reads the transition tables by column position and type: any change of the
# table's columns (added, dropped, renamed, retyped) is a new shape, hence a new plan.
shape = tuple((r["attnum"], r["name"], r["type"], r["atttypmod"])
              for r in plpy.execute(columns_plan, [TD["relid"]]))
cache_key = (TD["relid"], event, TD["args"][0], TD["args"][1], shape)
cached = SD.get(cache_key)
if cached is None:
    # text and varchar values are their own jsonb text; other types go through to_jsonb
    columns = [(name, type_oid in (25, 1043)) for _, name, type_oid, _ in shape]
    pk_columns = json.loads(TD["args"][0])
    phi_columns = json.loads(TD["args"][1])
    index = {name: i for i, (name, _) in enumerate(columns)}
    phi = set(phi_columns)
    ident = plpy.quote_ident
    literal = plpy.quote_literal

    keys = [c for c in pk_columns if c in index]

    def side(prefix):
        # one side of the change: a presence flag, every column as <prefix>v<i> (a PHI column
        # as the text it is hashed from, what to_jsonb(row) ->> column gives, <prefix>x<i>)
        # and the primary key as <prefix>k<j>
        items = ["true AS %sp" % prefix]
        for i, (name, plain) in enumerate(columns):
            if name in phi:
                value = "t.%s" % ident(name)
                if not plain:
                    value = "pg_catalog.to_jsonb(%s) #>> '{}'" % value
                items.append("%s AS %sx%d" % (value, prefix, i))
            else:
                items.append("t.%s AS %sv%d" % (ident(name), prefix, i))
        if len(sides) == 2:
            for j, name in enumerate(keys):
                items.append("t.%s AS %sk%d" % (ident(name), prefix, j))
        return items

    def nulls(prefix):
        return ["NULL AS %s" % item.rsplit(" AS ", 1)[1] for item in side(prefix)]

    def select(items, table):
        return "SELECT " + ", ".join(items) + " FROM " + table + " t"

    def hmac(value):
        return "policyc.hmac_hex(s.ipad, s.opad, %s)" % value

    if event == "INSERT":
        sides = ("n_",)
        source = select(side("n_"), "policyc_new")
    elif event == "DELETE":
        sides = ("o_",)
        source = select(side("o_"), "policyc_old")
    elif pk_columns and len(keys) == len(pk_columns):
        sides = ("o_", "n_")
        join = " AND ".join("o.o_k%d = n.n_k%d" % (j, j) for j in range(len(keys)))
        source = (
            "SELECT o.*, n.* FROM (" + select(side("o_"), "policyc_old") + ") o FULL JOIN ("
            + select(side("n_"), "policyc_new") + ") n ON " + join
        )
    else:
        sides = ("o_", "n_")
        keys = []
        source = (
            select(side("o_") + nulls("n_"), "policyc_old") + " UNION ALL "
            + select(nulls("o_") + side("n_"), "policyc_new")
        )

    # level 1: the HMAC of every PHI value of the one side, or of the new side of an UPDATE
    # (the key is joined once, as 0.3.0 did: a missing key gives NULL pseudonyms, never values)
    first = sides[-1]
    hashed = ["s.*", "pg_catalog.row_number() OVER () AS rn"]
    for i, (name, _) in enumerate(columns):
        if name in phi:
            hashed.append("%s AS %sh%d" % (hmac("s.%sx%d" % (first, i)), first, i))
    level1 = (
        "SELECT " + ", ".join(hashed) + " FROM (SELECT c.*, k.ipad, k.opad FROM ("
        + source + ") c LEFT JOIN policyc.hmac_key k ON k.id = 1) s OFFSET 0"
    )
    # level 2: the old side of an UPDATE reuses the new side's HMAC where the text is the same
    if len(sides) == 2:
        reused = ["s.*"]
        for i, (name, _) in enumerate(columns):
            if name in phi:
                reused.append(
                    "CASE WHEN s.o_x%d COLLATE \"C\" IS NOT DISTINCT FROM s.n_x%d COLLATE \"C\" "
                    "THEN s.n_h%d ELSE %s END AS o_h%d" % (i, i, i, hmac("s.o_x%d" % i), i))
        level2 = "SELECT " + ", ".join(reused) + " FROM (" + level1 + ") s OFFSET 0"
    else:
        level2 = level1

    def row(prefix):
        if prefix not in sides:
            return "NULL::jsonb"
        pairs = []
        for i, (name, _) in enumerate(columns):
            kind = "h" if name in phi else "v"
            pairs.append("%s, s.%s%s%d" % (literal(name), prefix, kind, i))
        for name in phi_columns:
            if name not in index:  # as 0.3.0: a PHI column the table lacks is a null key
                pairs.append("%s, NULL::text" % literal(name))
        # at most 100 arguments a call: 50 pairs an object, the objects joined
        parts = [
            "pg_catalog.jsonb_build_object(" + ", ".join(pairs[i:i + 50]) + ")"
            for i in range(0, len(pairs), 50)
        ] or ["'{}'::jsonb"]
        return "CASE WHEN s.%sp THEN %s END" % (prefix, " || ".join(parts))

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
        "pg_catalog.pg_current_xact_id() AS txid, i.session_id, i.agent, "
        "session_user AS db_user, "
        + row("o_") + " AS old_row, " + row("n_") + " AS new_row, $3::text AS chain, "
        "$4 + s.rn - 1 AS seq FROM (" + level2 + ") s "
        "LEFT JOIN policyc._my_identity() i ON true OFFSET 0) x"
    )
    cached = plpy.prepare(text, ["text", "text", "text", "bigint"])
    SD[cache_key] = cached

plan = cached
table_name = "%s.%s" % (TD["table_schema"], TD["table_name"])  # as it is named now
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
inserted = plpy.execute(plan, [table_name, event, chain, base]).nrows()
if inserted:
    plpy.execute(reserve, [chain, inserted])
return None
