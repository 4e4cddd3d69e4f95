-- policyc service-password, before it changes anything: the database, who is connected and
-- whether as a superuser, whether policyc was applied here (its ledger and the runtime's
-- _copy_credential exist), and whether the policy's service role exists.
SELECT current_database(),
       current_user,
       coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user), false),
       to_regclass('policyc.applied_objects') IS NOT NULL
         AND to_regprocedure('policyc._copy_credential(name, name)') IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = %(service_role)s)
