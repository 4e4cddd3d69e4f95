-- The DBA's timeouts for sessions of one role in this database, as the server would start
-- such a session before any client setting: one row per level that sets one of the named
-- timeouts.  level 3: the role in this database (ALTER ROLE r IN DATABASE d SET), 2: the
-- role (ALTER ROLE r SET), 1: this database (ALTER DATABASE d SET), 0: the server, read from
-- this connection's pg_settings (in ms) when its value comes from the server's configuration,
-- else the compiled default.  pg_db_role_setting and pg_settings are readable by every role.
SELECT CASE WHEN s.setrole <> 0 AND s.setdatabase <> 0 THEN 3
            WHEN s.setrole <> 0 THEN 2
            ELSE 1 END AS level,
       split_part(c, '=', 1) AS name,
       substr(c, strpos(c, '=') + 1) AS value
  FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
 WHERE s.setrole IN (0, (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s))
   AND s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                              WHERE d.datname = current_database()))
   AND split_part(c, '=', 1) = ANY (%(names)s)
UNION ALL
SELECT 0, p.name,
       CASE WHEN p.source IN ('default', 'configuration file', 'command line',
                              'environment variable', 'override', 'global')
            THEN p.setting ELSE p.boot_val END
  FROM pg_catalog.pg_settings p
 WHERE p.name = ANY (%(names)s)
