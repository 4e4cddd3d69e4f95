-- Answers: approval requests of the period by group, reason held and outcome, who decided
-- them, and how long a decision took (median, 95th percentile, longest).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Sections: 4 Access control (break-glass), 9 Approvals.
SELECT group_name, hold_reason, status, coalesce(decided_by, '') AS decided_by,
       count(*) AS requests,
       count(DISTINCT agent) AS agents,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS median_decision_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS p95_decision_s,
       max(extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS longest_decision_s,
       count(*) FILTER (WHERE human IS NOT NULL) AS with_human
  FROM audit.approvals
 WHERE requested_at >= %(from)s AND requested_at < %(to)s
 GROUP BY group_name, hold_reason, status, coalesce(decided_by, '')
 ORDER BY group_name, hold_reason, status, decided_by;
