SELECT n.nspname, c.relname,
       concat_ws(' | ',
         (SELECT string_agg(e.privilege_type, ',' ORDER BY e.privilege_type)
            FROM aclexplode(c.relacl) e WHERE e.grantee = 'policyc_owner'::regrole),
         (SELECT string_agg(a.attname || ':' || e.privilege_type, ',' ORDER BY a.attnum, e.privilege_type)
            FROM pg_attribute a, aclexplode(a.attacl) e
           WHERE a.attrelid = c.oid AND e.grantee = 'policyc_owner'::regrole))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
