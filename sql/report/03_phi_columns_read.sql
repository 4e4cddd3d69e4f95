-- Answers: which PHI columns each group's statements touched (masked or in clear), how many
-- statements and rows; one row per group and column.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Sections: 1 Summary, 7 Activity review (heat map), 8 Minimum necessary.
SELECT s.group_name, p.col AS column_name, count(*) AS statements,
       coalesce(sum(s.rows), 0) AS rows,
       count(*) FILTER (WHERE s.decision IN ('blocked', 'denied', 'expired', 'held'))
           AS refused_statements
  FROM audit.statements s CROSS JOIN LATERAL unnest(s.phi_columns) AS p(col)
 WHERE s.at >= %(from)s AND s.at < %(to)s
 GROUP BY s.group_name, p.col
 ORDER BY s.group_name NULLS LAST, p.col;
