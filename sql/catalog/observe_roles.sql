SELECT r.rolname,
       concat_ws(' ', r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                 r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil,
                 shobj_description(r.oid, 'pg_authid'),
                 {credential},
                 (SELECT array_agg(m.roleid::regrole::text ORDER BY 1)
                    FROM pg_auth_members m WHERE m.member = r.oid),
                 (SELECT array_agg(m.member::regrole::text ORDER BY 1)
                    FROM pg_auth_members m WHERE m.roleid = r.oid))
       -- the role's settings, and its settings in this database (which override them), one
       -- per line after the marker, sorted: plan drops the lines of timeouts a policy leaves
       -- to the DBA (policyc.plan.observe)
       || E'\nsettings:' || coalesce((
            SELECT string_agg(E'\n' || CASE WHEN s.setdatabase = 0 THEN '' ELSE 'db:' END || c,
                              '' ORDER BY s.setdatabase <> 0, c)
              FROM pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setrole = r.oid
               AND s.setdatabase IN (0, (SELECT d.oid FROM pg_database d
                                          WHERE d.datname = current_database()))), '')
  FROM pg_roles r WHERE r.rolname = ANY(%s)
