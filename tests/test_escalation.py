"""A group role cannot leave its group, reach a base table, the HMAC key, the identity table or
the audit schema — each attack is tried for real, connected as the group role."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conftest import Database, register

BASE_READ = "SELECT count(*) FROM public.patients"

# Each attack is a list of statements; any may fail. Afterwards the session must still be
# the group role and unable to read the base table.
ATTACKS: dict[str, list[str]] = {
    "set_role_superuser": ["SET ROLE postgres"],
    "set_role_owner": ["SET ROLE policyc_owner"],
    "set_role_other_group": ["SET ROLE research"],
    "set_role_proxy": ["SET ROLE policyc_proxy"],
    "reset_role": ["RESET ROLE"],
    "set_role_none": ["SET ROLE NONE"],
    "session_authorization": ["SET SESSION AUTHORIZATION postgres"],
    "reset_session_authorization": ["RESET SESSION AUTHORIZATION"],
    "discard_all": ["DISCARD ALL"],
    "set_config_role": ["SELECT set_config('role', 'postgres', false)"],
    "set_config_session_auth": ["SELECT set_config('session_authorization', 'postgres', false)"],
    "set_local_role_in_tx": ["BEGIN", "SET LOCAL ROLE postgres"],
    "security_definer_public": [
        "CREATE FUNCTION public.steal() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT count(*) FROM public.patients'",
    ],
    "security_definer_own_schema": [
        "CREATE FUNCTION billing.steal() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT count(*) FROM public.patients'",
    ],
    "security_definer_temp": [
        "CREATE FUNCTION pg_temp.steal() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT count(*) FROM public.patients'",
        "SELECT pg_temp.steal()",
    ],
    "search_path_to_base": ["SET search_path = public", "SELECT count(*) FROM patients"],
    "search_path_via_set_config": [
        "SELECT set_config('search_path', 'public', false)", "SELECT count(*) FROM patients",
    ],
    "cursor_over_base": [
        "BEGIN", "DECLARE c CURSOR FOR SELECT * FROM public.patients", "FETCH 1 FROM c",
    ],
    "copy_base_out": ["COPY public.patients TO STDOUT"],
    "copy_query_out": ["COPY (SELECT ssn FROM public.patients) TO STDOUT"],
    "copy_to_file": ["COPY billing.patients TO '/tmp/policyc-stolen.csv'"],
    "read_hmac_key": ["SELECT * FROM policyc.hmac_key"],
    "hash_oracle": ["SELECT policyc._hash_phi('{\"a\": \"1\"}', '{a}')"],
    "read_identity_table": ["SELECT * FROM policyc.session_identity"],
    "forge_identity": [
        "INSERT INTO policyc.session_identity VALUES (pg_backend_pid(), now(), "
        "gen_random_uuid(), 'x', 'billing', '{\"clinic_id\": 2}')",
    ],
    "register_own_session": [
        "SELECT policyc.register_session(pg_backend_pid(), gen_random_uuid(), 'x', 'billing', "
        "'{\"clinic_id\": 2}')",
    ],
    "read_audit": ["SELECT * FROM audit.statements"],
    "write_audit": ["INSERT INTO audit.statements (statement, decision) VALUES ('x', 'allowed')"],
    "other_group_views": ["SELECT count(*) FROM research.patients"],
    "create_table": ["CREATE TABLE public.x (id int)"],
    "create_view_in_own_schema": ["CREATE VIEW billing.x AS SELECT 1"],
    "alter_own_view": ["ALTER VIEW billing.patients SET (security_barrier = false)"],
    "replace_own_view": [
        "CREATE OR REPLACE VIEW billing.patients AS SELECT * FROM public.patients"
    ],
    "grant_to_self": ["GRANT SELECT ON public.patients TO billing"],
    "drop_policy": ["DROP POLICY policyc_billing ON public.patients"],
    "disable_rls": ["ALTER TABLE public.patients DISABLE ROW LEVEL SECURITY"],
    "lo_import": ["SELECT lo_import('/etc/passwd')"],
    "read_file": ["SELECT pg_read_file('/etc/passwd')"],
    "plpython": ["DO LANGUAGE plpython3u $$ plpy.execute('SELECT 1') $$"],
    "do_block": ["DO $$ BEGIN PERFORM set_config('role', 'postgres', false); END $$"],
}


def _try(conn: psycopg.Connection[Any], statements: list[str]) -> None:
    for statement in statements:
        try:
            conn.execute(statement.encode())
        except psycopg.Error:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.execute("ROLLBACK")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_does_not_escalate(applied_clinic: Database, attack: str) -> None:
    with applied_clinic.connect("billing") as conn:
        register(applied_clinic, conn, "agent-7", "billing", {"clinic_id": 1})
        visible = conn.execute("SELECT count(*) FROM patients").fetchone()
        _try(conn, ATTACKS[attack])
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        assert conn.execute("SELECT current_user, session_user").fetchone() == (
            "billing", "billing")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(BASE_READ)
        conn.execute("RESET search_path")
        # the row filter and identity are intact: same rows as before the attack
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == visible
        assert conn.execute("SELECT policyc.claim('clinic_id')").fetchone() == ("1",)
    # nothing the attack did survives for the next session either
    assert applied_clinic.execute(
        "SELECT count(*) FROM pg_proc WHERE proname = 'steal'"
    ) == [(0,)]
    assert applied_clinic.execute(
        "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.patients'::regclass"
    ) == [(True,)]


def test_attacks_are_each_refused_by_the_database(applied_clinic: Database) -> None:
    """The read-like attacks must fail with an error, not silently succeed on something else."""
    must_fail = ["copy_base_out", "copy_query_out", "read_hmac_key", "hash_oracle",
                 "read_identity_table", "forge_identity", "register_own_session", "read_audit",
                 "write_audit", "other_group_views", "create_table", "set_config_role",
                 "session_authorization", "set_role_superuser", "security_definer_public",
                 "lo_import", "read_file", "plpython", "copy_to_file", "alter_own_view",
                 "grant_to_self", "drop_policy", "disable_rls"]
    with applied_clinic.connect("billing") as conn:
        for attack in must_fail:
            with pytest.raises(psycopg.Error):
                conn.execute(ATTACKS[attack][-1].encode())
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, attack
