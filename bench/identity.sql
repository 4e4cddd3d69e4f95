-- Benchmark-only: give baseline sessions (direct and PgBouncer) the same verified identity
-- the proxy registers for its agents, so the group's row filters and audit triggers do the
-- same work on every path.  A group role may call register_self() for itself only, with the
-- claims fixed below.  This exists in the throwaway benchmark database and nowhere else: in
-- production only the proxy's service role may register sessions.
CREATE SCHEMA bench_identity;

CREATE TABLE bench_identity.claims (
    group_name name  PRIMARY KEY,
    agent      text  NOT NULL,
    claims     jsonb NOT NULL
);
INSERT INTO bench_identity.claims VALUES
    ('research', 'bench-agent', '{"sub": "bench-agent"}'),
    ('billing',   'bench-agent', '{"sub": "bench-agent", "clinic_id": 1}'),
    ('clinician', 'bench-agent', '{"sub": "bench-agent", "clinic_id": 2}');

CREATE FUNCTION bench_identity.register_self() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT policyc.register_session(pg_backend_pid(), gen_random_uuid(), c.agent,
                                    c.group_name, c.claims)
      FROM bench_identity.claims c
     WHERE c.group_name = session_user
$$;

REVOKE ALL ON FUNCTION bench_identity.register_self() FROM PUBLIC;
GRANT USAGE ON SCHEMA bench_identity TO research, billing, clinician;
GRANT EXECUTE ON FUNCTION bench_identity.register_self() TO research, billing, clinician;
