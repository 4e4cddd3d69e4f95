-- Answers: which policy (by hash) the proxy enforced in the period's sessions, from when to
-- when (runtime 0.7.0 records the hash with each session).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Requires: audit.sessions.policy_hash
-- Section: 1 Summary.
SELECT policy_hash::text AS policy_hash, count(*) AS sessions, min(started_at) AS first_at,
       max(started_at) AS last_at
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s
 GROUP BY policy_hash
 ORDER BY min(started_at);
