-- Answers: every prune so far: when, with which retention and cut-off, which partitions and
-- how many rows it dropped.
-- Parameters: none.
-- Section: 10 Retention.
SELECT checkpoint_id, at, retention, cutoff, table_name, partition_name, range_from, range_to,
       rows
  FROM audit.prunes
 ORDER BY checkpoint_id, table_name, range_from;
