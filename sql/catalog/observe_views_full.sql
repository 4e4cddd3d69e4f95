-- What a view is, as PostgreSQL prints it back: definition, options, owner, ACL, column grants.
SELECT c.oid,
       concat_ws(' | ', pg_get_viewdef(c.oid), c.reloptions::text, c.relowner::regrole,
                 c.relacl::text,
                 (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                    FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL))
  FROM pg_class c
 WHERE c.relkind = 'v' AND c.oid = ANY(%s::oid[])
