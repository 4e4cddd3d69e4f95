-- Answers: statements recorded as run (allowed, masked, approved) that never got their outcome
-- (no duration, no SQLSTATE), by group; the proxy writes the outcome right after the answer,
-- so these are statements whose session ended before the outcome was recorded.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 2 Audit controls.
SELECT group_name, count(*) AS statements, min(at) AS first_at, max(at) AS last_at,
       (array_agg(session_id ORDER BY at))[1:5] AS example_sessions
  FROM audit.statements
 WHERE at >= %(from)s AND at < %(to)s
   AND decision IN ('allowed', 'masked', 'approved')
   AND duration_ms IS NULL AND sqlstate IS NULL
 GROUP BY group_name
 ORDER BY statements DESC;
