# policyc._keep_backend_start(started text): keep this backend's start for
# policyc._kept_backend_start() (see backend_start.py). Called by policyc._my_identity() only
# (no one else may execute it), with the start it read from pg_stat_get_activity() as ISO 8601
# text in UTC, which timestamptz input reads the same whatever the DateStyle and TimeZone.
# The first value kept stays for the life of the backend.
if started is not None and "policyc.backend_start" not in GD:
    GD["policyc.backend_start"] = started
