# policyc._backend_start(): when this backend started, read once per backend (PL/Python).
#
# The identity of a session is the registration of its backend (pid) *and* that backend's
# start, so a later backend that reuses the pid never inherits it. Reading the start from
# pg_stat_get_activity() copies the status of every backend slot (max_connections of them,
# each with its query text) once per transaction: about 50 us a statement at 200 connections,
# paid by every row filter that reads a claim and every audited write. It never changes for
# the life of a backend, so it is read once and kept in GD, which SQL cannot reach (only
# superusers create functions in plpython3u).
#
# The value is kept as ISO 8601 text in UTC, which timestamptz input reads the same whatever
# the DateStyle and TimeZone of the moment. NULL (not allowed to see it) is not kept: the
# lookup then finds no identity, which fails closed.
start = GD.get("policyc.backend_start")
if start is None:
    start = plpy.execute(
        "SELECT pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS start "
        "FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a"
    )[0]["start"]
    if start is not None:
        GD["policyc.backend_start"] = start
return start
