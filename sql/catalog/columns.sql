SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       bt.typname, bt.typcategory, a.attnotnull, a.atthasdef,
       (SELECT ARRAY[sn.nspname::text, s.relname::text]
          FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace
         WHERE s.oid = pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                                              a.attname)::regclass)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
 ORDER BY n.nspname, c.relname, a.attnum
