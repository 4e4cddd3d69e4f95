-- policyc service-password: each group of the policy as this database has it: whether its
-- role exists, the role's comment (apply writes "policyc group G of database D" on it) and
-- whether apply recorded the role in the ledger (policyc.applied_objects: superusers only).
SELECT g.name,
       r.oid IS NOT NULL,
       shobj_description(r.oid, 'pg_authid'),
       EXISTS (SELECT 1 FROM policyc.applied_objects l WHERE l.object_key = 'role:' || g.name)
  FROM unnest(%(groups)s::text[]) AS g(name)
  LEFT JOIN pg_roles r ON r.rolname = g.name
 ORDER BY g.name
