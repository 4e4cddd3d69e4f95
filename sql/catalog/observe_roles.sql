SELECT r.rolname,
       concat_ws(' ', r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                 r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil,
                 r.rolconfig::text, shobj_description(r.oid, 'pg_authid'),
                 {credential},
                 (SELECT array_agg(m.roleid::regrole::text ORDER BY 1)
                    FROM pg_auth_members m WHERE m.member = r.oid),
                 (SELECT array_agg(m.member::regrole::text ORDER BY 1)
                    FROM pg_auth_members m WHERE m.roleid = r.oid))
  FROM pg_roles r WHERE r.rolname = ANY(%s)
