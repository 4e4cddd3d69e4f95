SELECT n.nspname, c.relname,
       concat_ws(' | ', c.relrowsecurity, c.relforcerowsecurity,
         (SELECT string_agg(concat_ws(' ', p.polname, p.polpermissive, p.polcmd,
                                      p.polroles::regrole[]::text,
                                      pg_get_expr(p.polqual, p.polrelid),
                                      pg_get_expr(p.polwithcheck, p.polrelid)), ' ; '
                            ORDER BY p.polname)
            FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'policyc%%'))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
