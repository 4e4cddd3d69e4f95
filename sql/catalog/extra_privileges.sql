-- Every privilege a group role holds beyond what policyc gives it: the drift a manual GRANT
-- leaves behind.  Each row is also the REVOKE that undoes it.
WITH g AS (SELECT r.oid, r.rolname FROM pg_roles r WHERE r.rolname = ANY(%(groups)s))
SELECT g.rolname, format('REVOKE %%s ON TABLE %%I.%%I FROM %%I', e.privilege_type, n.nspname, c.relname, g.rolname)
  FROM g, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) e
 WHERE e.grantee = g.oid AND n.nspname <> g.rolname
UNION ALL
SELECT g.rolname, format('REVOKE %%s (%%I) ON TABLE %%I.%%I FROM %%I', e.privilege_type, a.attname, n.nspname, c.relname, g.rolname)
  FROM g, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) e
 WHERE e.grantee = g.oid AND n.nspname <> g.rolname
UNION ALL
SELECT g.rolname, format('REVOKE %%s ON SCHEMA %%I FROM %%I', e.privilege_type, n.nspname, g.rolname)
  FROM g, pg_namespace n, aclexplode(n.nspacl) e
 WHERE e.grantee = g.oid AND n.nspname NOT IN (g.rolname, 'policyc')
UNION ALL
SELECT g.rolname, format('REVOKE %%s ON FUNCTION %%s FROM %%I', e.privilege_type, p.oid::regprocedure, g.rolname)
  FROM g, pg_proc p, aclexplode(p.proacl) e
 WHERE e.grantee = g.oid
UNION ALL
SELECT g.rolname, format('REVOKE %%s ON DATABASE %%I FROM %%I', e.privilege_type, d.datname, g.rolname)
  FROM g, pg_database d, aclexplode(d.datacl) e
 WHERE e.grantee = g.oid AND d.datname = current_database()
UNION ALL
SELECT g.rolname, format('REVOKE %%I FROM %%I', m.roleid::regrole::text, g.rolname)
  FROM g JOIN pg_auth_members m ON m.member = g.oid
UNION ALL
SELECT g.rolname, format('ALTER %%s %%s OWNER TO policyc_owner',
                         CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                         c.oid::regclass)
  FROM g JOIN pg_class c ON c.relowner = g.oid
 WHERE c.relpersistence <> 't'
ORDER BY 1, 2
