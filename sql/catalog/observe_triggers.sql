SELECT n.nspname, c.relname,
       coalesce((SELECT string_agg(pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text, ' ; ' ORDER BY t.tgname)
                   FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname LIKE 'policyc_audit%%'), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
