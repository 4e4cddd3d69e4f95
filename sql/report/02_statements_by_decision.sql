-- Answers: statements by decision (allowed, masked, blocked, held, approved, denied, expired,
-- error) and group, with the rows they returned.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Sections: 1 Summary, 7 Activity review.
SELECT group_name, decision, count(*) AS statements, coalesce(sum(rows), 0) AS rows
  FROM audit.statements
 WHERE at >= %(from)s AND at < %(to)s
 GROUP BY group_name, decision
 ORDER BY group_name NULLS LAST, decision;
