-- Answers: how much happened in the period: agents, sessions by outcome, statements, PHI
-- statements and the rows they returned, refusals and holds; and the trail's first and last
-- records overall.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 1 Summary.
WITH s AS (
    SELECT count(*) AS sessions,
           count(*) FILTER (WHERE outcome = 'refused') AS sessions_refused,
           count(*) FILTER (WHERE outcome = 'open') AS sessions_open,
           count(*) FILTER (WHERE outcome = 'closed') AS sessions_closed,
           count(DISTINCT agent) AS agents
      FROM audit.sessions
     WHERE started_at >= %(from)s AND started_at < %(to)s
), st AS (
    SELECT count(*) AS statements,
           count(*) FILTER (WHERE cardinality(phi_columns) > 0) AS phi_statements,
           coalesce(sum(rows) FILTER (WHERE cardinality(phi_columns) > 0), 0) AS phi_rows,
           count(*) FILTER (WHERE decision IN ('blocked', 'denied', 'expired')) AS refusals,
           count(*) FILTER (WHERE decision = 'held') AS holds,
           count(DISTINCT agent) AS statement_agents
      FROM audit.statements
     WHERE at >= %(from)s AND at < %(to)s
)
SELECT s.*, st.*,
       (SELECT min(started_at) FROM audit.sessions) AS first_session_at,
       (SELECT max(started_at) FROM audit.sessions) AS last_session_at,
       (SELECT min(at) FROM audit.statements) AS first_statement_at,
       (SELECT max(at) FROM audit.statements) AS last_statement_at,
       current_database() AS database, now() AS read_at, pg_is_in_recovery() AS replica,
       current_setting('server_version') AS server_version
  FROM s, st;
