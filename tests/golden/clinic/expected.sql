-- runtime-role:policyc_owner
CREATE ROLE "policyc_owner" NOLOGIN INHERIT;
GRANT pg_read_all_stats TO "policyc_owner";

-- runtime-role:policyc_auditor
CREATE ROLE "policyc_auditor" NOLOGIN NOINHERIT;

-- runtime-role:policyc_proxy
CREATE ROLE "policyc_proxy" LOGIN INHERIT;

-- role:billing
CREATE ROLE "billing" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE "billing" SET search_path = "billing";
COMMENT ON ROLE "billing" IS 'policyc group billing of database clinic';
SELECT policyc._copy_credential('billing', 'policyc_proxy');

-- role:research
CREATE ROLE "research" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE "research" SET search_path = "research";
COMMENT ON ROLE "research" IS 'policyc group research of database clinic';
SELECT policyc._copy_credential('research', 'policyc_proxy');

-- role:clinician
CREATE ROLE "clinician" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
ALTER ROLE "clinician" SET search_path = "clinician";
COMMENT ON ROLE "clinician" IS 'policyc group clinician of database clinic';
SELECT policyc._copy_credential('clinician', 'policyc_proxy');

-- schema:billing
CREATE SCHEMA "billing" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "billing" FROM PUBLIC;
GRANT USAGE ON SCHEMA "billing" TO "billing";
GRANT USAGE ON SCHEMA policyc TO "billing";

-- schema:research
CREATE SCHEMA "research" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "research" FROM PUBLIC;
GRANT USAGE ON SCHEMA "research" TO "research";
GRANT USAGE ON SCHEMA policyc TO "research";

-- schema:clinician
CREATE SCHEMA "clinician" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "clinician" FROM PUBLIC;
GRANT USAGE ON SCHEMA "clinician" TO "clinician";
GRANT USAGE ON SCHEMA policyc TO "clinician";

-- base-grants:public.claims
REVOKE ALL ON "public"."claims" FROM policyc_owner;
GRANT SELECT ON "public"."claims" TO policyc_owner;
GRANT INSERT ("patient_id", "visit_id", "amount", "code") ON "public"."claims" TO policyc_owner;
GRANT UPDATE ("status") ON "public"."claims" TO policyc_owner;

-- base-grants:public.notes
REVOKE ALL ON "public"."notes" FROM policyc_owner;
GRANT SELECT ON "public"."notes" TO policyc_owner;
GRANT INSERT ("id", "patient_id", "author", "written_at", "body") ON "public"."notes" TO policyc_owner;

-- base-grants:public.patients
REVOKE ALL ON "public"."patients" FROM policyc_owner;
GRANT SELECT ON "public"."patients" TO policyc_owner;

-- base-grants:public.visits
REVOKE ALL ON "public"."visits" FROM policyc_owner;
GRANT SELECT ON "public"."visits" TO policyc_owner;
GRANT INSERT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "public"."visits" TO policyc_owner;
GRANT UPDATE ("diagnosis", "notes") ON "public"."visits" TO policyc_owner;

-- view:billing:claims
CREATE VIEW "billing"."claims" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."patient_id" AS "patient_id",
    t."visit_id" AS "visit_id",
    t."amount" AS "amount",
    t."code" AS "code",
    t."status" AS "status",
    t."created_at" AS "created_at"
  FROM "public"."claims" AS t;
ALTER VIEW "billing"."claims" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."claims" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "visit_id", "amount", "code", "status", "created_at") ON "billing"."claims" TO "billing";
GRANT INSERT ("patient_id", "visit_id", "amount", "code") ON "billing"."claims" TO "billing";
GRANT UPDATE ("status") ON "billing"."claims" TO "billing";
GRANT USAGE ON SEQUENCE "public"."claims_id_seq" TO "billing";
COMMENT ON VIEW "billing"."claims" IS 'policyc: public.claims as group billing sees it (masked, filtered)';

-- view:billing:patients
CREATE VIEW "billing"."patients" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."clinic_id" AS "clinic_id",
    CASE WHEN (t."full_name")::text ~ '^[A-Za-z]+ [A-Za-z]+$' THEN pg_catalog.left((t."full_name")::text, 1) || '*** ' || pg_catalog.left(pg_catalog.split_part((t."full_name")::text, ' ', 2), 1) || '***' ELSE pg_catalog.regexp_replace((t."full_name")::text, E'(\\w)\\w*', E'\\1***', 'g') END AS "full_name",
    pg_catalog.encode(pg_catalog.sha256((SELECT k.opad FROM policyc.hmac_key k) || pg_catalog.sha256((SELECT k.ipad FROM policyc.hmac_key k) || pg_catalog.convert_to((t."ssn")::text, 'UTF8'))), 'hex') AS "ssn",
    CAST(pg_catalog.date_trunc('year', CAST(t."birth_date" AS timestamp)) AS date) AS "birth_date"
  FROM "public"."patients" AS t;
ALTER VIEW "billing"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "full_name", "ssn", "birth_date") ON "billing"."patients" TO "billing";
COMMENT ON VIEW "billing"."patients" IS 'policyc: public.patients as group billing sees it (masked, filtered)';

-- view:billing:visits
CREATE VIEW "billing"."visits" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."patient_id" AS "patient_id",
    t."clinic_id" AS "clinic_id",
    t."visited_at" AS "visited_at"
  FROM "public"."visits" AS t;
ALTER VIEW "billing"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "clinic_id", "visited_at") ON "billing"."visits" TO "billing";
COMMENT ON VIEW "billing"."visits" IS 'policyc: public.visits as group billing sees it (masked, filtered)';

-- view:research:patients
CREATE VIEW "research"."patients" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."clinic_id" AS "clinic_id",
    CAST(pg_catalog.date_trunc('year', CAST(t."birth_date" AS timestamp)) AS date) AS "birth_date",
    CASE WHEN pg_catalog.left((t."zip")::text, 2) = ANY ('{00,01,02,03,04,05,06,07,08,09,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99}'::text[]) AND pg_catalog.substr((t."zip")::text, 3, 1) = ANY ('{0,1,2,3,4,5,6,7,8,9}'::text[]) THEN CASE WHEN pg_catalog.left((t."zip")::text, 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left((t."zip")::text, 3) END ELSE CASE WHEN pg_catalog.left(pg_catalog.regexp_replace((t."zip")::text, E'\\D', '', 'g'), 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left(pg_catalog.regexp_replace((t."zip")::text, E'\\D', '', 'g'), 3) END END AS "zip"
  FROM "public"."patients" AS t;
ALTER VIEW "research"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "research"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "birth_date", "zip") ON "research"."patients" TO "research";
COMMENT ON VIEW "research"."patients" IS 'policyc: public.patients as group research sees it (masked, filtered)';

-- view:research:visits
CREATE VIEW "research"."visits" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."patient_id" AS "patient_id",
    t."visited_at" AS "visited_at",
    CAST(CASE WHEN t."diagnosis" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "diagnosis"
  FROM "public"."visits" AS t;
ALTER VIEW "research"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "research"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "visited_at", "diagnosis") ON "research"."visits" TO "research";
COMMENT ON VIEW "research"."visits" IS 'policyc: public.visits as group research sees it (masked, filtered)';

-- view:clinician:notes
CREATE VIEW "clinician"."notes" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."patient_id" AS "patient_id",
    t."author" AS "author",
    t."written_at" AS "written_at",
    t."body" AS "body"
  FROM "public"."notes" AS t;
ALTER VIEW "clinician"."notes" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."notes" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "author", "written_at", "body") ON "clinician"."notes" TO "clinician";
GRANT INSERT ("id", "patient_id", "author", "written_at", "body") ON "clinician"."notes" TO "clinician";
COMMENT ON VIEW "clinician"."notes" IS 'policyc: public.notes as group clinician sees it (masked, filtered)';

-- view:clinician:patients
CREATE VIEW "clinician"."patients" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."clinic_id" AS "clinic_id",
    t."full_name" AS "full_name",
    pg_catalog.encode(pg_catalog.sha256((SELECT k.opad FROM policyc.hmac_key k) || pg_catalog.sha256((SELECT k.ipad FROM policyc.hmac_key k) || pg_catalog.convert_to((t."ssn")::text, 'UTF8'))), 'hex') AS "ssn",
    t."birth_date" AS "birth_date",
    CASE WHEN pg_catalog.left((t."zip")::text, 2) = ANY ('{00,01,02,03,04,05,06,07,08,09,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99}'::text[]) AND pg_catalog.substr((t."zip")::text, 3, 1) = ANY ('{0,1,2,3,4,5,6,7,8,9}'::text[]) THEN CASE WHEN pg_catalog.left((t."zip")::text, 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left((t."zip")::text, 3) END ELSE CASE WHEN pg_catalog.left(pg_catalog.regexp_replace((t."zip")::text, E'\\D', '', 'g'), 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left(pg_catalog.regexp_replace((t."zip")::text, E'\\D', '', 'g'), 3) END END AS "zip",
    CAST(CASE WHEN t."email" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "email",
    CAST(CASE WHEN t."phone" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "phone",
    t."created_at" AS "created_at"
  FROM "public"."patients" AS t;
ALTER VIEW "clinician"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "full_name", "ssn", "birth_date", "zip", "email", "phone", "created_at") ON "clinician"."patients" TO "clinician";
COMMENT ON VIEW "clinician"."patients" IS 'policyc: public.patients as group clinician sees it (masked, filtered)';

-- view:clinician:visits
CREATE VIEW "clinician"."visits" WITH (security_barrier = true) AS
SELECT
    t."id" AS "id",
    t."patient_id" AS "patient_id",
    t."clinic_id" AS "clinic_id",
    t."visited_at" AS "visited_at",
    t."diagnosis" AS "diagnosis",
    t."notes" AS "notes",
    t."provider" AS "provider"
  FROM "public"."visits" AS t;
ALTER VIEW "clinician"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "clinician"."visits" TO "clinician";
GRANT INSERT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "clinician"."visits" TO "clinician";
GRANT UPDATE ("diagnosis", "notes") ON "clinician"."visits" TO "clinician";
COMMENT ON VIEW "clinician"."visits" IS 'policyc: public.visits as group clinician sees it (masked, filtered)';

-- rls:public.claims
DROP POLICY IF EXISTS "policyc_billing" ON "public"."claims";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."claims";
ALTER TABLE "public"."claims" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."claims" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."claims" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."claims" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (patient_id IN (SELECT p.id FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (patient_id IN (SELECT p.id FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)))));

-- rls:public.notes
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."notes";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."notes";
ALTER TABLE "public"."notes" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."notes" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."notes" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_clinician" ON "public"."notes" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (patient_id IN (SELECT p.id FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (patient_id IN (SELECT p.id FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)))));

-- rls:public.patients
DROP POLICY IF EXISTS "policyc_billing" ON "public"."patients";
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."patients";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."patients";
ALTER TABLE "public"."patients" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."patients" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."patients" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."patients" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));
CREATE POLICY "policyc_clinician" ON "public"."patients" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));

-- rls:public.visits
DROP POLICY IF EXISTS "policyc_billing" ON "public"."visits";
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."visits";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."visits";
ALTER TABLE "public"."visits" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."visits" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."visits" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."visits" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));
CREATE POLICY "policyc_clinician" ON "public"."visits" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));

-- trigger:public.claims
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."claims";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."claims";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."claims";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."claims"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."claims"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."claims"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');

-- trigger:public.notes
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."notes";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."notes";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."notes";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."notes"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."notes"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."notes"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');

-- trigger:public.patients
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."patients";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."patients";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."patients";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."patients"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."patients"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."patients"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');

-- trigger:public.visits
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."visits";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."visits";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."visits";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."visits"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."visits"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."visits"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');

-- approvers
DO $policyc$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['security_analysts']::text[] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$policyc$;
DO $policyc$
DECLARE
    g text;
BEGIN
    FOR g IN SELECT DISTINCT e.grantee::regrole::text
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) e
              WHERE p.oid IN ('audit.approve(bigint, text)'::regprocedure,
                              'audit.deny(bigint, text)'::regprocedure)
                AND e.grantee NOT IN (0, p.proowner)
    LOOP
        EXECUTE pg_catalog.format(
            'REVOKE EXECUTE ON FUNCTION audit.approve(bigint, text), audit.deny(bigint, text) FROM %s', g);
    END LOOP;
END
$policyc$;
DELETE FROM policyc.approver_roles;
INSERT INTO policyc.approver_roles (role_name) VALUES
    ('security_analysts');
GRANT USAGE ON SCHEMA audit TO "security_analysts";
GRANT EXECUTE ON FUNCTION audit.approve(bigint, text), audit.deny(bigint, text) TO "security_analysts";
GRANT SELECT ON audit.approvals, audit.pending_approvals TO "security_analysts";
