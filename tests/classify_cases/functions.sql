# functions are found anywhere in the tree, by last name part, case-insensitively
select set_config('role','x',false)
=> select[role_change] blocked

# set_config is judged like SET of its setting to its value (settings.setting_reason)
SELECT pg_catalog.set_config('statement_timeout', '1s', true)
=> select[] allowed

SELECT current_setting('jit'), set_config('jit', 'off', false)
=> select[] allowed

SELECT pg_catalog.set_config('search_path', '', false)
=> select[] allowed

select set_config('search_path', 'billing, "$user",pg_temp , PG_CATALOG', false)
=> select[] allowed

select set_config('search_path', 'billing, public', false)
=> select[] blocked

select set_config('search_path', '"Billing"', false)
=> select[] blocked

select set_config('search_path', current_setting('search_path'), false)
=> select[] blocked

select set_config('client_encoding', 'LATIN1', false)
=> select[] blocked

select set_config('app.tenant_id', '2', false)
=> select[] blocked

select set_config('policyc.claims', '{}', true)
=> select[set_config] blocked

select set_config('work_mem', '1GB', false)
=> select[] blocked

select set_config('work_mem', NULL, false)
=> select[] allowed

SELECT SET_CONFIG($1, $2, false)
=> select[set_config] blocked

# pg_dump 15.8+: the name column of exactly one pg_settings row, bound by the WHERE literal
SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'
=> select[] allowed

SELECT set_config(name, 'off', false) FROM pg_catalog.pg_settings WHERE name = 'jit'
=> select[] allowed

SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'role'
=> select[set_config] blocked

SELECT set_config(name, 'public', false) FROM pg_settings WHERE name = 'search_path'
=> select[] blocked

SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'jit' OR name = 'role'
=> select[set_config] blocked

SELECT set_config(name, 'x', false) FROM pg_settings
=> select[set_config] blocked

SELECT set_config(name, 'x', false) FROM pg_settings s WHERE name = 'jit'
=> select[set_config] blocked

SELECT set_config(name, 'x', false) FROM (SELECT 'role' AS name) pg_settings WHERE name = 'jit'
=> select[set_config] blocked

SELECT * FROM (SELECT pg_read_file('/etc/passwd')) s
=> select[file_access] blocked

SELECT * FROM pg_ls_dir('.')
=> select[file_access] blocked

SELECT id FROM patients WHERE ssn = (SELECT pg_read_binary_file('x')::text)
=> select[file_access] blocked

SELECT pg_stat_file('postgresql.conf')
=> select[file_access] blocked

select pg_catalog.lo_export(1,'/tmp/x')
=> select[file_access,large_object] blocked

SELECT lo_import('/etc/hosts')
=> select[file_access,large_object] blocked

SELECT lo_get(16400)
=> select[large_object] blocked

SELECT loread(lo_open(1, 262144), 100)
=> select[large_object] blocked

SELECT * FROM dblink('host=x', 'select 1') AS t(a int)
=> select[dblink] blocked tables=

SELECT dblink_exec('drop table t')
=> select[dblink] blocked

SELECT query_to_xml('select * from patients', true, true, '')
=> select[dynamic_sql] blocked

# sleeping and advisory locks hold a backend without end: side-effect functions (registry)
SELECT pg_sleep(10)
=> select[sleep] blocked

SELECT 1 FROM patients WHERE pg_sleep_for('1 minute') IS NULL
=> select[sleep] blocked

SELECT pg_terminate_backend(pid) FROM pg_stat_activity
=> select[system_admin] blocked

SELECT pg_cancel_backend(123)
=> select[system_admin] blocked

select PG_RELOAD_CONF()
=> select[system_admin] blocked

SELECT pg_rotate_logfile()
=> select[system_admin] blocked

SELECT pg_promote()
=> select[system_admin] blocked

SELECT pg_create_logical_replication_slot('s', 'pgoutput')
=> select[system_admin] blocked

# in function arguments, CTEs, VALUES, ORDER BY, DEFAULT expressions
SELECT coalesce(NULL, upper(pg_read_file('x')))
=> select[file_access] blocked

WITH c AS (SELECT lo_unlink(5)) SELECT * FROM c
=> select[large_object] blocked

INSERT INTO claims (code) VALUES (pg_read_file('x'))
=> insert[file_access] blocked

SELECT id FROM claims ORDER BY pg_sleep(0.1)
=> select[sleep] blocked

CREATE TABLE x (a text DEFAULT pg_read_file('/etc/passwd'))
=> ddl[ddl,file_access] blocked
=> clinician: ddl[ddl,file_access] blocked

# ordinary functions are fine
SELECT now(), lower(code), current_setting('TimeZone') FROM claims
=> select[] allowed

# pg_notify() could forge the proxy's own approval notifications: NOTIFY on own channels only
SELECT pg_notify('c', 'p')
=> select[] blocked

SELECT pg_advisory_lock(1)
=> select[] blocked

# the allow-list (issue #11 class 2): functions that run SQL given as text, read other
# sessions' activity, files or administration are refused; unknown names are refused
SELECT ts_stat('SELECT pg_terminate_backend(pid) FROM pg_stat_activity')
=> select[] blocked

SELECT * FROM ts_stat('SELECT to_tsvector(notes) FROM visits')
=> select[] blocked

SELECT pg_stat_get_activity(NULL)
=> select[] blocked

SELECT pg_catalog.pg_lock_status()
=> select[] blocked

SELECT pg_relation_size('patients')
=> select[] blocked

SELECT no_such_function(1)
=> select[] blocked

SELECT "LOWER"('x')
=> select[] blocked

SELECT public.anything()
=> select[] blocked

SELECT lower(full_name), count(*), now(), coalesce(NULL, 1), jsonb_build_object('a', 1) FROM patients GROUP BY 1
=> select[] masked

SELECT policyc.claim('clinic_id'), policyc.agent(), policyc.session_id()
=> select[] allowed

SELECT policyc.mask_hash('x')
=> select[] blocked

SELECT pg_catalog.current_setting('TimeZone'), pg_backend_pid(), format_type(23, NULL)
=> select[] allowed

# catalog relations: what drivers and psql read, never other sessions' activity or stats
SELECT * FROM pg_stat_activity
=> select[] blocked

SELECT pid, relation FROM pg_catalog.pg_locks
=> select[] blocked

SELECT * FROM pg_stats WHERE tablename = 'patients'
=> select[] blocked

WITH pg_locks AS (SELECT 1 AS pid) SELECT * FROM pg_locks
=> select[] blocked

SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
=> select[] allowed

SELECT column_name FROM information_schema.columns WHERE table_name = 'patients'
=> select[] allowed

# relations: the group's own views (plain or schema-qualified) and vetted catalog relations
SELECT count(*) FROM billing.patients
=> select[] allowed

SELECT * FROM public.pg_stat_statements
=> select[] blocked

SELECT count(*) FROM public.patients
=> select[] blocked

SELECT * FROM research.visits
=> select[] blocked

SELECT * FROM audit.statements
=> select[] blocked

# an operator runs its function: only pg_catalog's
SELECT 1 OPERATOR(pg_catalog.+) 1
=> select[] allowed

SELECT 1 OPERATOR(public.===) 1
=> select[] blocked
