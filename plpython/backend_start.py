# policyc._kept_backend_start(): this backend's start, as policyc._my_identity() kept it (or
# NULL the first time). PL/Python, for GD: per backend, and out of SQL's reach (only
# superusers create functions in plpython3u).
#
# The identity of a session is the registration of its backend (pid) *and* that backend's
# start, so a later backend that reuses the pid never inherits it. Reading the start from
# pg_stat_get_activity() copies the status of every backend slot (max_connections of them,
# each with its query text) once per transaction: about 50 us a statement at 200 connections,
# paid by every row filter that reads a claim and every audited write. It never changes for
# the life of a backend, so _my_identity reads it once and keeps it here.
#
# No SPI here: a PL/Python query runs in a subtransaction, which PostgreSQL refuses during a
# parallel query, and an agent's first statement may well be one.
return GD.get("policyc.backend_start")
