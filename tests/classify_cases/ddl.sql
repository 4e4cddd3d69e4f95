# DDL: blocked unless the group's approval rules list ddl (billing does)
CREATE TABLE x (a int)
=> ddl[ddl] needs_approval tables=.x
=> clinician: ddl[ddl] blocked

CREATE TEMP TABLE scratch (a int)
=> ddl[ddl] needs_approval
=> clinician: ddl[ddl] blocked

CREATE TABLE x AS SELECT ssn FROM patients
=> ddl[ddl] needs_approval phi=public.patients.ssn
=> clinician: ddl[ddl] blocked

SELECT id INTO TEMP scratch FROM claims
=> ddl[ddl] needs_approval

DROP TABLE claims
=> ddl[ddl] needs_approval

ALTER TABLE claims ADD COLUMN note text
=> ddl[ddl] needs_approval

CREATE INDEX ON claims (code)
=> ddl[ddl] needs_approval

CREATE VIEW v AS SELECT * FROM patients
=> ddl[ddl] needs_approval

CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'
=> ddl[ddl] needs_approval

GRANT SELECT ON claims TO someone
=> ddl[ddl] needs_approval

COMMENT ON TABLE claims IS 'x'
=> ddl[ddl] needs_approval

REFRESH MATERIALIZED VIEW mv
=> ddl[ddl] needs_approval

CREATE SCHEMA s
=> ddl[ddl] needs_approval

# role management and foreign servers are blocked even when ddl is approvable
CREATE ROLE r SUPERUSER
=> ddl[ddl,role_change] blocked

GRANT admin TO agent
=> ddl[ddl,role_change] blocked

ALTER ROLE agent SET role = 'admin'
=> ddl[ddl,role_change] blocked

CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'x')
=> ddl[dblink,ddl] blocked

CREATE EXTENSION dblink
=> ddl[dblink,ddl] blocked

IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y
=> ddl[dblink,ddl] blocked

CREATE EXTENSION adminpack
=> ddl[ddl,file_access] blocked

# truncate: approval when listed, else the database decides
TRUNCATE claims
=> truncate[truncate] needs_approval tables=public.claims
=> clinician: truncate[truncate] allowed

# server administration
ALTER SYSTEM SET log_statement = 'none'
=> other[system_admin] blocked

LOAD 'auto_explain'
=> other[system_admin] blocked

CHECKPOINT
=> other[system_admin] blocked
