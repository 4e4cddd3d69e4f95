SELECT r.rolname, shobj_description(r.oid, 'pg_authid'), r.rolcanlogin
  FROM pg_roles r WHERE r.rolname = ANY(%s)
