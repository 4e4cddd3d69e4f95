-- Answers: the monthly partitions of every audit table with their range and estimated rows
-- (pg_class.reltuples as of the last ANALYZE or VACUUM; 0 when never analyzed).
-- Parameters: none.
-- Section: 10 Retention.
SELECT t.table_name, b.partition_name, b.range_from, b.range_to, b.is_default,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
  FROM unnest(ARRAY['sessions', 'statements', 'approvals', 'row_changes']) AS t(table_name)
  CROSS JOIN LATERAL audit._partition_bounds(t.table_name) b
  JOIN pg_class c ON c.relname = b.partition_name
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'audit'
 ORDER BY t.table_name, b.range_from NULLS LAST;
