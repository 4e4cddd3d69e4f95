-- Answers: logins per day by outcome and reason (expired, bad_signature, unknown_kid,
-- no_matching_group, tls_required, too_many_connections, ...) and by token issuer (known for
-- accepted logins only: a refused token's claims are not recorded).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 5 Authentication.
SELECT date_trunc('day', started_at AT TIME ZONE 'UTC')::date AS day,
       CASE WHEN outcome = 'refused' THEN 'refused' ELSE 'accepted' END AS outcome,
       coalesce(reason, '') AS reason, coalesce(claims ->> 'iss', '') AS issuer,
       count(*) AS logins
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4;
