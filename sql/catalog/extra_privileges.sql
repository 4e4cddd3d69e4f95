-- Every privilege a group role holds beyond its own schema: the drift a manual GRANT leaves
-- behind. One row per privilege: (group, privilege, object type, schema, name, column); the
-- caller turns each into the REVOKE that undoes it.
WITH g AS (SELECT r.oid, r.rolname FROM pg_roles r WHERE r.rolname = ANY(%(groups)s))
SELECT g.rolname, e.privilege_type,
       CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname, NULL
  FROM g, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) e
 WHERE e.grantee = g.oid AND n.nspname <> g.rolname
UNION ALL
SELECT g.rolname, e.privilege_type, 'TABLE', n.nspname, c.relname, a.attname
  FROM g, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) e
 WHERE e.grantee = g.oid AND n.nspname <> g.rolname
UNION ALL
SELECT g.rolname, e.privilege_type, 'SCHEMA', NULL, n.nspname, NULL
  FROM g, pg_namespace n, aclexplode(n.nspacl) e
 WHERE e.grantee = g.oid AND n.nspname NOT IN (g.rolname, 'policyc')
UNION ALL
SELECT g.rolname, e.privilege_type, 'FUNCTION', n.nspname, p.oid::regprocedure::text, NULL
  FROM g, pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) e
 WHERE e.grantee = g.oid
UNION ALL
SELECT g.rolname, e.privilege_type, 'DATABASE', NULL, d.datname, NULL
  FROM g, pg_database d, aclexplode(d.datacl) e
 WHERE e.grantee = g.oid AND d.datname = current_database()
UNION ALL
SELECT g.rolname, 'MEMBER', 'ROLE', NULL, m.roleid::regrole::text, NULL
  FROM g JOIN pg_auth_members m ON m.member = g.oid
UNION ALL
SELECT g.rolname, 'OWNER', CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
       n.nspname, c.relname, NULL
  FROM g JOIN pg_class c ON c.relowner = g.oid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relpersistence <> 't'
ORDER BY 1, 3, 4, 5, 6, 2
