-- Answers: rows changed in the audited tables, per table, agent (or database user outside the
-- proxy) and operation.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 3 Integrity.
SELECT table_name, coalesce(agent, '(' || db_user || ')') AS agent, agent IS NULL AS direct,
       operation, count(*) AS rows, count(DISTINCT txid) AS transactions
  FROM audit.row_changes
 WHERE at >= %(from)s AND at < %(to)s
 GROUP BY table_name, coalesce(agent, '(' || db_user || ')'), agent IS NULL, operation
 ORDER BY table_name, agent, operation;
