-- Answers: time from request to decision over every decided request of the period (median,
-- 95th percentile, longest), and how many approvals were used: statements that ran under one.
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 9 Approvals.
SELECT count(*) AS requests,
       count(*) FILTER (WHERE status = 'approved') AS approved,
       count(*) FILTER (WHERE status = 'denied') AS denied,
       count(*) FILTER (WHERE status = 'expired') AS expired,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS median_decision_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS p95_decision_s,
       max(extract(epoch FROM decided_at - requested_at))
           FILTER (WHERE status IN ('approved', 'denied')) AS longest_decision_s,
       (SELECT count(*) FROM audit.statements s
         WHERE s.at >= %(from)s AND s.at < %(to)s AND s.decision = 'approved')
           AS statements_run_under_approval
  FROM audit.approvals
 WHERE requested_at >= %(from)s AND requested_at < %(to)s;
