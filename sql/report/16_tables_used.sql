-- Answers: which tables each group's statements named in the period (resolved to the policy's
-- base tables), how often and with which decisions: the "used" side of minimum necessary.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 8 Minimum necessary.
SELECT s.group_name, t.name AS table_name, count(*) AS statements,
       count(*) FILTER (WHERE s.decision IN ('allowed', 'masked', 'approved')) AS ran,
       count(*) FILTER (WHERE s.kind IN ('insert', 'update', 'delete', 'merge', 'copy_in'))
           AS writes
  FROM audit.statements s CROSS JOIN LATERAL unnest(s.tables) AS t(name)
 WHERE s.at >= %(from)s AND s.at < %(to)s
 GROUP BY s.group_name, t.name
 ORDER BY s.group_name NULLS LAST, t.name;
