SELECT n.nspname, c.relname,
       concat_ws(' | ', pg_get_viewdef(c.oid), c.reloptions::text, c.relowner::regrole,
                 c.relacl::text,
                 (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                    FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'v' AND n.nspname = ANY(%s)
