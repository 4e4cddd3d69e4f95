-- A fingerprint of each view in the group schemas: its stored rule, options, owner, ACL and
-- column names and grants. Cheap (no pg_get_viewdef, no relation opened); plan compares it with
-- the one recorded at the last apply and reads the full definition (observe_views_full.sql)
-- only for views whose fingerprint changed.
SELECT n.nspname, c.relname, c.oid,
       'fp:' || md5(concat_ws(' | ', r.ev_action::text, c.reloptions::text, c.relowner::regrole,
                              c.relacl::text,
                              (SELECT string_agg(a.attname || '=' || coalesce(a.attacl::text, ''),
                                                 ',' ORDER BY a.attnum)
                                 FROM pg_attribute a
                                WHERE a.attrelid = c.oid AND a.attnum > 0)))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename = '_RETURN'
 WHERE c.relkind = 'v' AND n.nspname = ANY(%s)
