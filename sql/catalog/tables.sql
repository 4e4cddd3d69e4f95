SELECT n.nspname, c.relname, c.relkind, c.relrowsecurity,
       coalesce((SELECT array_agg(DISTINCT e.privilege_type ORDER BY e.privilege_type)
                   FROM aclexplode(c.relacl) e WHERE e.grantee = 0), '{}'),
       coalesce((SELECT array_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))
                   FROM pg_index i JOIN pg_attribute a
                     ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                  WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
