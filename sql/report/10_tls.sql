-- Answers: sessions by transport (TLS version, or none), and every accepted session of the
-- period that was not encrypted (loopback plaintext, allowed only by
-- --allow-plaintext-loopback).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 6 Transmission security.
SELECT 'summary' AS row_kind, coalesce(tls, false) AS tls,
       coalesce(tls_version, CASE WHEN tls THEN 'TLS (version unknown)' ELSE 'none' END)
           AS version,
       count(*) AS sessions, count(*) FILTER (WHERE outcome = 'refused') AS refused,
       NULL::uuid AS session_id, NULL::text AS agent, NULL::text AS client_addr,
       NULL::timestamptz AS started_at
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s
 GROUP BY 2, 3
UNION ALL
(SELECT 'plaintext', false, 'none', 1, 0, session_id, agent, host(client_addr), started_at
   FROM audit.sessions
  WHERE started_at >= %(from)s AND started_at < %(to)s
    AND NOT coalesce(tls, false) AND outcome <> 'refused'
  ORDER BY started_at
  LIMIT 100)
ORDER BY 1 DESC, 3;
