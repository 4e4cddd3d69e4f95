-- Answers: automatic logoff: per group, the lifetime of the tokens agents logged in with
-- (exp - iat) and how long sessions lasted, and sessions ended because their token expired.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 4 Access control.
SELECT group_name, count(*) AS sessions,
       max((claims ->> 'exp')::numeric - (claims ->> 'iat')::numeric) AS longest_token_s,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY (claims ->> 'exp')::numeric - (claims ->> 'iat')::numeric) AS median_token_s,
       count(*) FILTER (WHERE NOT claims ? 'exp') AS tokens_without_exp,
       max(extract(epoch FROM ended_at - started_at)) AS longest_session_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - started_at))
           AS median_session_s,
       count(*) FILTER (WHERE end_reason = 'token expired') AS ended_by_expiry,
       count(*) FILTER (WHERE ended_at IS NULL) AS still_open
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s AND outcome <> 'refused'
 GROUP BY group_name
 ORDER BY group_name;
