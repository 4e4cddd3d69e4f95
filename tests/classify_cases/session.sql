# role and session changes: never allowed
SeT RoLe x
=> role[role_change,set_config] blocked

SET LOCAL ROLE admin
=> role[role_change,set_config] blocked

set role none
=> role[role_change,set_config] blocked

RESET ROLE
=> role[role_change,set_config] blocked

set session authorization x
=> role[role_change,set_config] blocked

SET SESSION AUTHORIZATION DEFAULT
=> role[role_change,set_config] blocked

RESET SESSION AUTHORIZATION
=> role[role_change,set_config] blocked

reset all
=> reset[role_change] blocked

discard all
=> discard[role_change] blocked

DISCARD PLANS
=> discard[] allowed

DISCARD TEMP
=> discard[] allowed

set policyc.agent = 'root'
=> set[set_config] blocked

RESET policyc.claims
=> reset[set_config] blocked

# search_path stays the group's view schema
SET search_path = public
=> set[] blocked

set search_path to default
=> set[] blocked

SET SCHEMA 'public'
=> set[] blocked

RESET search_path
=> reset[] blocked

SHOW search_path
=> show[] allowed

# harmless settings
SET statement_timeout = '5s'
=> set[] allowed

SET LOCAL lock_timeout TO 1000
=> set[] allowed

set application_name = 'agent-7'
=> set[] allowed

SET DateStyle TO ISO, MDY
=> set[] allowed

SET TIME ZONE 'UTC'
=> set[] allowed

set extra_float_digits = 3
=> set[] allowed

SET client_encoding TO 'UTF8'
=> set[] allowed

SET NAMES 'UTF8'
=> set[] allowed

SET standard_conforming_strings = on
=> set[] allowed

SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
=> set[] allowed

SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY
=> set[] allowed

SET CONSTRAINTS ALL DEFERRED
=> set[] allowed

RESET statement_timeout
=> reset[] allowed

SHOW TimeZone
=> show[] allowed

SHOW TRANSACTION ISOLATION LEVEL
=> show[] allowed

SHOW server_version
=> show[] allowed

# anything else is blocked (fail closed)
SET work_mem = '4GB'
=> set[] blocked

SET row_security = off
=> set[] blocked

SET log_statement = 'none'
=> set[] blocked

SET myapp.tenant = 42
=> set[] blocked

SHOW ALL
=> show[] blocked

SHOW data_directory
=> show[] blocked

# transactions
BEGIN
=> transaction[] allowed

START TRANSACTION ISOLATION LEVEL REPEATABLE READ
=> transaction[] allowed

SAVEPOINT s1
=> transaction[] allowed

ROLLBACK TO SAVEPOINT s1
=> transaction[] allowed

RELEASE s1
=> transaction[] allowed

COMMIT
=> transaction[] allowed

abort
=> transaction[] allowed

PREPARE TRANSACTION 'gid1'
=> transaction[prepare_transaction] blocked

COMMIT PREPARED 'gid1'
=> transaction[prepare_transaction] blocked

ROLLBACK PREPARED 'gid1'
=> transaction[prepare_transaction] blocked
