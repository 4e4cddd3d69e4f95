-- The approver side of the runtime as apply left it: the approver_roles table and who holds
-- EXECUTE on audit.approve/deny, SELECT on the approval tables and USAGE on schema audit.
SELECT concat_ws(' | ',
         (SELECT string_agg(a.role_name::text, ',' ORDER BY a.role_name)
            FROM policyc.approver_roles a),
         (SELECT string_agg(p.proname || ':' || e.grantee::regrole::text || ':' || e.privilege_type,
                            ',' ORDER BY p.proname, e.grantee::regrole::text, e.privilege_type)
            FROM pg_proc p, aclexplode(p.proacl) e
           WHERE p.oid IN (to_regprocedure('audit.approve(bigint, text)'),
                           to_regprocedure('audit.deny(bigint, text)'))),
         (SELECT string_agg(c.relname || ':' || e.grantee::regrole::text || ':' || e.privilege_type,
                            ',' ORDER BY c.relname, e.grantee::regrole::text, e.privilege_type)
            FROM pg_class c, aclexplode(c.relacl) e
           WHERE c.oid IN (to_regclass('audit.approvals'), to_regclass('audit.pending_approvals'))),
         (SELECT string_agg(e.grantee::regrole::text || ':' || e.privilege_type,
                            ',' ORDER BY e.grantee::regrole::text, e.privilege_type)
            FROM pg_namespace n, aclexplode(n.nspacl) e
           WHERE n.nspname = 'audit'))
