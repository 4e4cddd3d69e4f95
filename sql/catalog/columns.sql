SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       bt.typname, bt.typcategory, a.attnotnull, a.atthasdef, sq.seq
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
  -- the sequence pg_get_serial_sequence() names (a serial's or an identity column's), found
  -- from the few sequences there are instead of by name for every column
  LEFT JOIN (SELECT d.refobjid, d.refobjsubid, min(ARRAY[sn.nspname::text, s.relname::text]) AS seq
               FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                               AND d.objsubid = 0
              WHERE s.relkind = 'S' AND d.refclassid = 'pg_class'::regclass
                AND d.deptype IN ('a', 'i')
              GROUP BY d.refobjid, d.refobjsubid) sq
         ON sq.refobjid = c.oid AND sq.refobjsubid = a.attnum
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
 ORDER BY n.nspname, c.relname, a.attnum
