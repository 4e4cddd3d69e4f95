-- The baseline policyc's audit trigger is compared with: the classic per-row PL/pgSQL audit
-- trigger (in the spirit of the PostgreSQL wiki's "Audit trigger 91plus"), FOR EACH ROW, one
-- INSERT into an audit table per changed row with the old and new row as jsonb.
--
-- It does less than policyc's trigger on purpose (so the comparison flatters the baseline):
-- it writes PHI in clear instead of HMAC-hashing it, and records no agent or session.  The
-- audit table has the same shape and indexes as audit.row_changes (identity key, txid index).
-- bench/run.py loads this into a scratch database; it is never part of a policy.
CREATE SCHEMA IF NOT EXISTS bench_audit;

CREATE TABLE IF NOT EXISTS bench_audit.row_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    txid        xid8 NOT NULL,
    table_name  text NOT NULL,
    operation   text NOT NULL,
    db_user     name NOT NULL,
    old_row     jsonb,
    new_row     jsonb
);
CREATE INDEX IF NOT EXISTS row_log_txid_idx ON bench_audit.row_log (txid);

CREATE OR REPLACE FUNCTION bench_audit.log_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_audit.row_log (txid, table_name, operation, db_user, old_row, new_row)
    VALUES (pg_current_xact_id(), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, session_user,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;
