EXPLAIN ANALYZE DELETE FROM t
=> explain[delete_all,explain_analyze_write] needs_approval
=> clinician: explain[delete_all,explain_analyze_write] allowed

EXPLAIN (ANALYZE, BUFFERS) UPDATE claims SET status = 'x' WHERE id = 1
=> explain[explain_analyze_write] needs_approval

EXPLAIN (ANALYZE true) INSERT INTO claims (code) VALUES ('x')
=> explain[explain_analyze_write] needs_approval

EXPLAIN ANALYZE WITH d AS (DELETE FROM t WHERE id = 1 RETURNING 1) SELECT * FROM d
=> explain[explain_analyze_write,write_in_cte] needs_approval

# not analyze: nothing runs, so no write shape
EXPLAIN DELETE FROM t
=> explain[] allowed

EXPLAIN (ANALYZE off) DELETE FROM t
=> explain[] allowed

EXPLAIN (ANALYZE 0, COSTS off) UPDATE t SET a = 1
=> explain[] allowed

EXPLAIN ANALYZE SELECT * FROM claims
=> explain[] allowed

# the planner's estimates describe every tenant's rows: no EXPLAIN of a row-filtered table
# (the test groups filter patients, not visits)
EXPLAIN SELECT ssn FROM patients
=> explain[] blocked phi=public.patients.ssn

EXPLAIN SELECT id FROM visits
=> explain[] allowed

EXPLAIN (FORMAT JSON) SELECT count(*) FROM patients WHERE clinic_id = 2
=> explain[] blocked

# functions stay risky under EXPLAIN
EXPLAIN SELECT pg_read_file('x')
=> explain[file_access] blocked

PREPARE q AS SELECT ssn FROM patients WHERE id = $1
=> prepare[] masked

PREPARE d (int) AS DELETE FROM t
=> prepare[delete_all] blocked

EXECUTE q(1)
=> execute[] allowed

DEALLOCATE q
=> deallocate[] allowed

DEALLOCATE ALL
=> deallocate[] allowed

DECLARE c CURSOR WITH HOLD FOR SELECT id FROM claims
=> declare_cursor[] allowed

FETCH 10 FROM c
=> fetch[] allowed

MOVE NEXT IN c
=> fetch[] allowed

CLOSE c
=> close_cursor[] allowed

CLOSE ALL
=> close_cursor[] allowed

LISTEN approvals
=> listen[] allowed

UNLISTEN *
=> listen[] allowed

NOTIFY approvals, 'hello'
=> notify[] allowed

LOCK TABLE claims IN ACCESS EXCLUSIVE MODE
=> lock[lock] blocked

VACUUM claims
=> vacuum[] blocked

ANALYZE claims
=> vacuum[] blocked

CALL do_things(1)
=> call[] blocked

do $$ begin end $$
=> do[do_block] blocked
=> clinician: do[do_block] allowed
=> research: do[do_block] needs_approval

DO LANGUAGE plpgsql 'begin perform 1; end'
=> do[do_block] blocked

REINDEX TABLE claims
=> ddl[ddl] needs_approval

CLUSTER claims
=> ddl[ddl] needs_approval

# EXPLAIN [ANALYZE] EXECUTE runs or plans what a name holds, unseen
EXPLAIN ANALYZE EXECUTE h
=> explain[run_by_name] blocked

EXPLAIN EXECUTE q(1)
=> explain[run_by_name] blocked

CREATE TEMP TABLE t AS EXECUTE h
=> ddl[ddl,run_by_name] blocked
