-- A request still open for exactly this statement (approval mode "ticket"): the same agent,
-- group, statement text and parameter values, pending and not past its expiry.  A retry
-- before the decision is answered with this request's id instead of opening another.  Read
-- by the proxy (ApprovalBroker.find_open).
SELECT id
  FROM audit.approvals
 WHERE status = 'pending'
   AND expires_at > now()
   AND agent = %(agent)s
   AND group_name = %(group)s
   AND statement = %(statement)s
   AND parameters IS NOT DISTINCT FROM NULLIF(%(parameters)s::jsonb, 'null'::jsonb)
 ORDER BY id DESC
 LIMIT 1
