-- Which database the proxy's audit connection reached: the cluster's system identifier
-- (kept by physical replicas and failover, new for initdb, pg_upgrade or a restore into
-- another cluster), the database's OID in that cluster, and its current name.
-- pg_control_system() is executable by PUBLIC unless a DBA revoked it; pg_database is
-- readable by every role.
SELECT c.system_identifier::text, d.oid::bigint, d.datname::text
  FROM pg_control_system() AS c, pg_database AS d
 WHERE d.datname = current_database()
