-- Answers: agents whose first session in the whole trail falls in the period (first-seen
-- agents), with when and from where they first appeared.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 7 Activity review.
SELECT DISTINCT ON (agent) agent, started_at AS first_seen_at, group_name,
       host(client_addr) AS client_addr, outcome
  FROM audit.sessions
 WHERE agent IS NOT NULL
   AND agent IN (SELECT s.agent FROM audit.sessions s
                  WHERE s.started_at >= %(from)s AND s.started_at < %(to)s)
   AND agent NOT IN (SELECT s.agent FROM audit.sessions s
                      WHERE s.started_at < %(from)s AND s.agent IS NOT NULL)
 ORDER BY agent, started_at;
