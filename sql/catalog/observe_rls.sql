-- A fingerprint of each table's row security: the switches and policyc's policies as stored
-- (parse trees, not pg_get_expr); plan reads observe_rls_full.sql only where it changed.
SELECT n.nspname, c.relname, c.oid,
       'fp:' || md5(concat_ws(' | ', c.relrowsecurity, c.relforcerowsecurity,
         (SELECT string_agg(concat_ws(' ', p.polname, p.polpermissive, p.polcmd,
                                      p.polroles::regrole[]::text, p.polqual::text,
                                      p.polwithcheck::text), ' ; '
                            ORDER BY p.polname)
            FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'policyc%%')))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
