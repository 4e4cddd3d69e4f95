-- Answers: sessions ended because the audit trail could not be written (58030), and logins
-- refused for the same reason.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 2 Audit controls.
SELECT session_id, agent, group_name, started_at, ended_at, outcome,
       coalesce(end_reason, reason) AS reason, proxy
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s
   AND (end_reason LIKE 'audit trail unavailable%%' OR reason = 'audit_unavailable')
 ORDER BY started_at
 LIMIT 200;
