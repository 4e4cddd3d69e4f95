-- Answers: sessions of the period whose statement records are not numbered 1, 2, 3 ... without
-- a gap or a repeat up to their close (end_seq): a record that never arrived or was removed.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 2 Audit controls.
WITH per_session AS (
    SELECT session_id, count(*) AS records, count(DISTINCT seq) AS positions,
           min(seq) AS first_seq, max(seq) AS last_seq
      FROM audit.statements
     WHERE session_id IS NOT NULL AND at >= %(from)s  -- a session's records follow its start
     GROUP BY session_id
)
SELECT se.session_id, se.agent, se.group_name, se.started_at, se.end_seq,
       coalesce(p.records, 0) AS records, coalesce(p.positions, 0) AS positions,
       p.first_seq, p.last_seq
  FROM audit.sessions se
  LEFT JOIN per_session p ON p.session_id = se.session_id
 WHERE se.started_at >= %(from)s AND se.started_at < %(to)s
   AND se.outcome <> 'refused'
   AND (coalesce(p.records, 0) <> coalesce(p.positions, 0)              -- a repeat
        OR coalesce(p.first_seq, 1) <> 1                               -- the start missing
        OR coalesce(p.last_seq, 0) <> coalesce(p.positions, 0)         -- a hole
        OR (se.end_seq IS NOT NULL AND se.end_seq <> coalesce(p.last_seq, 0) + 1))
 ORDER BY se.started_at
 LIMIT 200;
