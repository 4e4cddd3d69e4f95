-- Answers: unique identification: accepted sessions without an agent name, and per agent the
-- number of distinct client addresses, groups and sessions it was seen with.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 4 Access control.
SELECT agent, count(*) AS sessions, count(DISTINCT client_addr) AS addresses,
       count(DISTINCT group_name) AS groups,
       array_agg(DISTINCT group_name ORDER BY group_name) AS group_names
  FROM audit.sessions
 WHERE started_at >= %(from)s AND started_at < %(to)s AND outcome <> 'refused'
 GROUP BY agent
 ORDER BY agent NULLS FIRST;
