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

# the session user is the group role: RESET ALL and DISCARD ALL have nowhere to go, and the
# lexing settings return to the values pinned in the upstream startup packet
reset all
=> reset[] allowed

discard all
=> discard[] allowed

DISCARD PLANS
=> discard[] allowed

DISCARD TEMP
=> discard[] allowed

set policyc.agent = 'root'
=> set[set_config] blocked

RESET policyc.claims
=> reset[set_config] blocked

# search_path may name only the group's own schema, pg_catalog, pg_temp and ''
SET search_path = public
=> set[] blocked

SET search_path = billing, public
=> set[] blocked

set search_path to default
=> set[] allowed

SET SCHEMA 'public'
=> set[] blocked

SET SCHEMA 'billing'
=> set[] allowed

RESET search_path
=> reset[] allowed

SET search_path = billing
=> set[] allowed

SET search_path TO "$user", pg_catalog, pg_temp
=> set[] allowed

SET search_path = 'billing, pg_catalog'
=> set[] blocked

SET search_path = research
=> set[] blocked
=> research: set[] allowed

SHOW search_path
=> show[] allowed

SHOW ALL
=> show[] allowed

SHOW data_directory
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

SET jit = off
=> set[] allowed

SET work_mem = '8MB'
=> set[] allowed

SET work_mem = 65536
=> set[] allowed

SET work_mem = '65MB'
=> set[] blocked

SET work_mem = '1TB'
=> set[] blocked

SET enable_seqscan = off
=> set[] blocked

SET client_encoding TO 'UTF8'
=> set[] allowed

SET NAMES 'UTF8'
=> set[] allowed

SET standard_conforming_strings = on
=> set[] allowed

# settings that change how the server reads SQL are pinned (issue #11 class 1)
SET standard_conforming_strings = off
=> set[] blocked

set standard_conforming_strings to 'false'
=> set[] blocked

SET SESSION standard_conforming_strings = 0
=> set[] blocked

SET LOCAL standard_conforming_strings TO off
=> set[] blocked

RESET standard_conforming_strings
=> reset[] allowed

SET standard_conforming_strings TO DEFAULT
=> set[] allowed

SET client_encoding = 'SJIS'
=> set[] blocked

SET NAMES 'GB18030'
=> set[] blocked

set names 'big5'
=> set[] blocked

SET client_encoding TO 'gbk'
=> set[] blocked

SET client_encoding = 'LATIN1'
=> set[] blocked

SET client_encoding TO 'UTF-8'
=> set[] allowed

RESET client_encoding
=> reset[] allowed

SET backslash_quote = on
=> set[] blocked

SET backslash_quote = safe_encoding
=> set[] allowed

SELECT 1; SET standard_conforming_strings = off; SELECT '\', 'x'
=> select[] allowed | set[] blocked | select[] allowed

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

# row_security off can only turn filtered reads into errors (tests/attacks/settings.yaml)
SET row_security = off
=> set[] allowed

SET log_statement = 'none'
=> set[] blocked

SET myapp.tenant = 42
=> set[] blocked


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
