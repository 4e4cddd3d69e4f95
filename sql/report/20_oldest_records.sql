-- Answers: the oldest record of each audit table (what retention has kept so far).
-- Parameters: none.
-- Section: 10 Retention.
SELECT 'sessions' AS table_name, (SELECT min(started_at) FROM audit.sessions) AS oldest
UNION ALL SELECT 'statements', (SELECT min(at) FROM audit.statements)
UNION ALL SELECT 'approvals', (SELECT min(requested_at) FROM audit.approvals)
UNION ALL SELECT 'row_changes', (SELECT min(at) FROM audit.row_changes)
UNION ALL SELECT 'checkpoints', (SELECT min(at) FROM audit.checkpoints);
