"""asyncpg through the real proxy: type introspection (which turns JIT off with set_config),
arrays, the view's composite row type, pools (whose reset sends RESET ALL and friends) and
errors inside transactions (issue #12)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import Database
from proxyharness import RunningProxy, wait_for

CLINIC_1 = [1, 4, 7, 10, 13]


def connect_kwargs(proxy: RunningProxy, agent: str = "apg-1") -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": proxy.port, "user": agent, "database": proxy.database,
            "password": proxy.token(agent, "billing", clinic_id=1), "ssl": False}


def test_asyncpg_arrays_and_the_view_composite(proxy: RunningProxy) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> tuple[Any, ...]:
        conn = await asyncpg.connect(**connect_kwargs(proxy))
        try:
            rows = await conn.fetch(
                "SELECT id, clinic_id, ssn FROM patients WHERE id = ANY($1::int[]) ORDER BY id",
                [*CLINIC_1, 2, 3])
            ids = await conn.fetchval(
                "SELECT array_agg(id ORDER BY id) FROM patients WHERE id = ANY($1)", CLINIC_1)
            codes = await conn.fetchval("SELECT $1::text[] || ARRAY['x']", ["a", "b"])
            # a composite (the billing view's row type) makes asyncpg introspect the type
            patient = await conn.fetchval("SELECT p FROM patients p ORDER BY id LIMIT 1")
            several = await conn.fetchval(
                "SELECT array_agg(p ORDER BY id) FROM patients p WHERE id = ANY($1)",
                CLINIC_1[:3])
            jit = await conn.fetchval("SHOW jit")
            return rows, ids, codes, patient, several, jit
        finally:
            await conn.close()

    rows, ids, codes, patient, several, jit = asyncio.run(run())
    assert [(r["id"], r["clinic_id"]) for r in rows] == [(i, 1) for i in CLINIC_1]
    assert all(len(r["ssn"]) == 64 for r in rows)
    assert ids == CLINIC_1 and codes == ["a", "b", "x"]
    assert list(patient.keys()) == ["id", "clinic_id", "full_name", "ssn", "birth_date"]
    assert (patient["id"], patient["clinic_id"]) == (1, 1)
    assert patient["birth_date"].month == 1 and len(patient["ssn"]) == 64
    assert [p["id"] for p in several] == CLINIC_1[:3]
    assert jit in ("on", "off")  # asyncpg restores the session's JIT after introspecting


def test_asyncpg_error_inside_a_transaction_is_the_real_error(proxy: RunningProxy) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> tuple[Any, ...]:
        conn = await asyncpg.connect(**connect_kwargs(proxy))
        try:
            # execute() without arguments is the simple protocol, fetch() the extended one
            with pytest.raises(asyncpg.exceptions.UndefinedColumnError) as simple:
                async with conn.transaction():
                    await conn.fetchval("SELECT count(*) FROM patients")
                    await conn.execute("SELECT nosuchcol FROM patients")
            with pytest.raises(asyncpg.exceptions.UndefinedColumnError) as extended:
                async with conn.transaction():
                    await conn.fetch("SELECT nosuchcol FROM patients WHERE id = $1", 1)
            # a nested transaction is a savepoint: the outer one goes on
            async with conn.transaction():
                with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                    async with conn.transaction():
                        await conn.execute("SELECT * FROM nosuchtable")
                count = await conn.fetchval("SELECT count(*) FROM patients")
            return simple.value.sqlstate, extended.value.sqlstate, count
        finally:
            await conn.close()

    assert asyncio.run(run()) == ("42703", "42703", 100)


def test_asyncpg_pool_reset_between_acquires(applied_clinic: Database,
                                             proxy: RunningProxy) -> None:
    """A pool resets a connection on release (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    RESET ALL): settings an agent changed go back, pinned settings and identity stay."""
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> list[tuple[Any, ...]]:
        seen: list[tuple[Any, ...]] = []
        async with asyncpg.create_pool(min_size=1, max_size=1, **connect_kwargs(
                proxy, "pool-1")) as pool:
            for cycle in range(4):
                async with pool.acquire() as conn:
                    seen.append((
                        await conn.fetchval("SHOW work_mem"),
                        await conn.fetchval("SELECT current_user || '/' || policyc.agent()"),
                        await conn.fetchval("SHOW standard_conforming_strings"),
                        await conn.fetchval("SELECT count(*) FROM claims WHERE patient_id = $1",
                                            CLINIC_1[cycle]) >= 0,
                    ))
                    await conn.execute("SET work_mem = '7MB'")
                    # a transaction left open is rolled back by the release
                    tr = conn.transaction()
                    await tr.start()
                    await conn.fetchval("SELECT 1")
        return seen

    seen = asyncio.run(run())
    assert len(seen) == 4 and len(set(seen)) == 1, seen
    work_mem, identity, scs, counted = seen[0]
    assert work_mem != "7MB" and identity == "billing/pool-1" and scs == "on" and counted
    sessions = wait_for(lambda: applied_clinic.execute(
        "SELECT count(*) FROM audit.sessions WHERE agent = 'pool-1'"))
    assert sessions == [(1,)]  # one connection, reused


def test_asyncpg_several_pooled_connections(proxy: RunningProxy) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> list[Any]:
        async with asyncpg.create_pool(min_size=2, max_size=3,
                                       **connect_kwargs(proxy, "pool-2")) as pool:

            async def one(patient: int) -> Any:
                async with pool.acquire() as conn:
                    return await conn.fetchrow(
                        "SELECT id, clinic_id FROM patients WHERE id = $1", patient)

            return list(await asyncio.gather(*(one(p) for p in CLINIC_1 * 2)))

    rows = asyncio.run(run())
    assert [tuple(r) for r in rows] == [(p, 1) for p in CLINIC_1 * 2]
