-- The tables row filters read (the filtered tables and those of their subqueries): estimated
-- rows (pg_class.reltuples; -1 until first analyzed) and the columns that lead a valid,
-- non-partial index (an index helps a search by its first column). Read only for plan's
-- warnings about row filters that scan a large table.
SELECT n.nspname, c.relname, c.reltuples::float8,
       ARRAY(SELECT DISTINCT a.attname::text
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL
              ORDER BY 1)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
 ORDER BY n.nspname, c.relname
