-- Answers: statements per day (UTC) by decision.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 7 Activity review (stacked bars).
SELECT date_trunc('day', at AT TIME ZONE 'UTC')::date AS day, decision, count(*) AS statements
  FROM audit.statements
 WHERE at >= %(from)s AND at < %(to)s
 GROUP BY 1, 2
 ORDER BY 1, 2;
