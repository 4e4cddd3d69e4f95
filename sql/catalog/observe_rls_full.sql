-- A table's row security as PostgreSQL prints it back: switches, then policyc's policies.
SELECT c.oid,
       concat_ws(' | ', c.relrowsecurity, c.relforcerowsecurity,
         (SELECT string_agg(concat_ws(' ', p.polname, p.polpermissive, p.polcmd,
                                      p.polroles::regrole[]::text,
                                      pg_get_expr(p.polqual, p.polrelid),
                                      pg_get_expr(p.polwithcheck, p.polrelid)), ' ; '
                            ORDER BY p.polname)
            FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'policyc%%'))
  FROM pg_class c
 WHERE c.oid = ANY(%s::oid[])
