-- Rows of the group's tables an agent received in the window (approval.budget): what the
-- proxies recorded in audit.statements, approved runs excepted. Read by the proxy at login.
SELECT coalesce(sum(rows), 0)::bigint
  FROM audit.statements
 WHERE agent = %(agent)s
   AND group_name = %(group)s
   AND at > now() - make_interval(secs => %(seconds)s)
   AND tables && %(tables)s::text[]
   AND decision IN ('allowed', 'masked')
   AND rows IS NOT NULL
