# Plain reads and writes; the sample group billing reads patients/visits, writes claims.
SELECT abalance FROM pgbench_accounts WHERE aid = $1
=> select[] allowed tables=.pgbench_accounts phi=

SELECT id, clinic_id FROM patients WHERE id = $1
=> select[] allowed tables=public.patients phi=

select count(*) from patients
=> select[] allowed phi=

SELECT ssn FROM patients
=> select[] masked tables=public.patients phi=public.patients.ssn

SELECT p.full_name FROM patients p JOIN visits v ON v.patient_id = p.id
=> select[] masked tables=public.patients,public.visits phi=public.patients.full_name
=> clinician: select[] allowed phi=public.patients.full_name

# only the PHI columns the group's view carries (billing's has no email, phone or zip)
select * from patients
=> select[] masked phi=public.patients.birth_date,public.patients.full_name,public.patients.ssn
=> research: select[] masked phi=public.patients.birth_date,public.patients.full_name,public.patients.ssn
=> clinician: select[] masked phi=public.patients.birth_date,public.patients.email,public.patients.full_name,public.patients.ssn,public.patients.zip

table visits
=> select[] masked phi=public.visits.diagnosis,public.visits.notes
=> clinician: select[] allowed phi=public.visits.diagnosis,public.visits.notes

# whole-row reference to an alias reads every column
select p from patients p
=> select[] masked phi=public.patients.birth_date,public.patients.full_name,public.patients.ssn

select row_to_json(v) from visits v where v.id = 1
=> select[] masked phi=public.visits.diagnosis,public.visits.notes

# PHI read through a subquery or CTE alias is still seen
select s.x from (select ssn as x from patients) s
=> select[] masked phi=public.patients.ssn

with d as (select * from visits) select d.id from d
=> select[] masked tables=public.visits phi=public.visits.diagnosis,public.visits.notes

select q.ssn from (select id, ssn from patients) q
=> select[] masked phi=public.patients.ssn

# the view schema name written explicitly still resolves by table name
select ssn from billing.patients
=> select[] masked tables=public.patients phi=public.patients.ssn

# a base table by its qualified name: refused (agents read their views), PHI still recorded
select id from public.patients where zip = '12345'
=> select[] blocked phi=public.patients.zip

INSERT INTO claims (patient_id, amount, code) VALUES ($1, $2, $3)
=> insert[] allowed tables=public.claims phi=

INSERT INTO claims (patient_id) SELECT id FROM patients RETURNING *
=> insert[] masked

UPDATE claims SET status = 'paid' WHERE id = $1
=> update[] allowed

UPDATE claims SET status = 'paid'
=> update[update_all] needs_approval
=> clinician: update[update_all] allowed

UPDATE t SET a=1 WHERE true
=> update[update_all] needs_approval

UPDATE t SET a=1 WHERE 'a' = 'a' OR a = 5
=> update[update_all] needs_approval

UPDATE t SET a=1 WHERE a = 5 AND 1 = 1
=> update[] allowed

UPDATE t SET a=1 WHERE NOT false
=> update[update_all] needs_approval

UPDATE t SET a=1 WHERE 't'::boolean
=> update[update_all] needs_approval

UPDATE t SET a=1 FROM u
=> update[update_all] needs_approval tables=.t,.u

DELETE FROM t
=> delete[delete_all] needs_approval

DELETE FROM t WHERE 1=1
=> delete[delete_all] needs_approval
=> clinician: delete[delete_all] allowed

DELETE FROM t WHERE 1 = 2
=> delete[] allowed

DELETE FROM t WHERE x = x
=> delete[delete_all] needs_approval

DELETE FROM t WHERE x IS NOT DISTINCT FROM x
=> delete[delete_all] needs_approval

DELETE FROM t WHERE 2 IN (1, 2, 3)
=> delete[delete_all] needs_approval

DELETE FROM t WHERE 1 < 2 AND 'b' >= 'a' AND 1.5 <> 2
=> delete[delete_all] needs_approval

DELETE FROM t WHERE null IS NULL
=> delete[delete_all] needs_approval

DELETE FROM t WHERE true IS TRUE
=> delete[delete_all] needs_approval

DELETE FROM t WHERE x = y
=> delete[] allowed

DELETE FROM t WHERE id = $1
=> delete[] allowed

DELETE FROM t WHERE CURRENT OF c
=> delete[] allowed

DELETE FROM claims USING patients WHERE claims.patient_id = patients.id AND patients.ssn = $1
=> delete[] masked phi=public.patients.ssn

# data-modifying CTEs, anywhere
WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d
=> select[delete_all,write_in_cte] needs_approval tables=.t
=> clinician: select[delete_all,write_in_cte] allowed

WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d
=> select[write_in_cte] needs_approval

WITH u AS (UPDATE claims SET status = 'x' WHERE id = 1 RETURNING id) INSERT INTO claims (patient_id) SELECT id FROM u
=> insert[write_in_cte] needs_approval

SELECT * FROM (WITH i AS (INSERT INTO claims (code) VALUES ('a') RETURNING id) SELECT id FROM i) s
=> select[write_in_cte] needs_approval

WITH r AS (SELECT 1) SELECT * FROM r
=> select[] allowed tables=

MERGE INTO claims c USING staged s ON c.id = s.id WHEN MATCHED THEN UPDATE SET status = s.status WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)
=> merge[] allowed tables=.staged,public.claims

MERGE INTO claims c USING staged s ON true WHEN MATCHED THEN DELETE
=> merge[delete_all] needs_approval

MERGE INTO claims c USING staged s ON c.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE
=> merge[delete_all] needs_approval

SELECT * FROM patients FOR UPDATE
=> select[] masked

# writes go only to the group's views: pg_settings' update rule would call set_config unseen
UPDATE pg_settings SET setting = 'public' WHERE name = 'search_path'
=> update[] blocked tables=.pg_settings

update pg_catalog.pg_settings set setting = 'off' where name = 'jit'
=> update[] blocked tables=pg_catalog.pg_settings

WITH x AS (UPDATE pg_settings SET setting = 'on' WHERE name = 'jit' RETURNING 1) SELECT * FROM x
=> select[write_in_cte] blocked tables=.pg_settings

INSERT INTO pg_catalog.pg_description VALUES (1, 1, 0, 'x')
=> insert[] blocked tables=pg_catalog.pg_description

DELETE FROM information_schema.sql_features WHERE true
=> delete[delete_all] blocked tables=information_schema.sql_features

UPDATE billing.claims SET status = 'x' WHERE id = 1
=> update[] allowed tables=public.claims
