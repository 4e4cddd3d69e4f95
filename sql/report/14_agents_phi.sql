-- Answers: per agent and day: statements, PHI statements and PHI rows, refusals, and the
-- statements at each hour of the day (UTC); the base of the top agents by PHI rows and of the
-- anomalies (a day far above the agent's own usual level, unusual hours, repeated refusals).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 7 Activity review.
SELECT agent, group_name, date_trunc('day', at AT TIME ZONE 'UTC')::date AS day,
       extract(hour FROM at AT TIME ZONE 'UTC')::int AS hour,
       count(*) AS statements,
       count(*) FILTER (WHERE cardinality(phi_columns) > 0) AS phi_statements,
       coalesce(sum(rows) FILTER (WHERE cardinality(phi_columns) > 0), 0) AS phi_rows,
       count(*) FILTER (WHERE decision IN ('blocked', 'denied', 'expired')) AS refusals
  FROM audit.statements
 WHERE at >= %(from)s AND at < %(to)s
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4;
