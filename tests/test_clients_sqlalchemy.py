"""SQLAlchemy 2 (psycopg and asyncpg drivers), pandas and LangChain's SQLDatabase through the
real proxy: reflection sees the group's views and no tables, an ORM reads views with an
explicit primary key and inserts through a writable view, errors keep their class.  Each
recipe in docs/discovery.md is one of these tests (issue #12)."""

import asyncio
import decimal
import warnings
from typing import Any

import psycopg
import pytest

from conftest import Database
from proxyharness import RunningProxy, wait_for

VIEWS = ["claims", "patients", "visits"]
CLINIC_1 = [1, 4, 7, 10, 13]


def url(proxy: RunningProxy, driver: str, agent: str) -> Any:
    """A SQLAlchemy URL for a billing agent of clinic 1 (the token is the password)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    query = {} if driver == "asyncpg" else {"sslmode": "disable"}
    return sqlalchemy.URL.create(
        f"postgresql+{driver}", username=agent, password=proxy.token(agent, "billing",
                                                                     clinic_id=1),
        host="127.0.0.1", port=proxy.port, database=proxy.database, query=query)


def engine(proxy: RunningProxy, agent: str = "sa-1", driver: str = "psycopg") -> Any:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    if driver == "psycopg2":
        pytest.importorskip("psycopg2")
    return sqlalchemy.create_engine(url(proxy, driver, agent), poolclass=sqlalchemy.NullPool)


def test_sqlalchemy_reflection_sees_the_group_views(proxy: RunningProxy) -> None:
    sa = pytest.importorskip("sqlalchemy")
    eng = engine(proxy)
    try:
        inspector = sa.inspect(eng)
        assert inspector.default_schema_name == "billing"
        assert inspector.get_table_names() == []
        assert sorted(inspector.get_view_names()) == VIEWS
        assert sorted(inspector.get_view_names(schema="billing")) == VIEWS
        assert inspector.has_table("patients")  # SQLAlchemy 2 counts views as tables here
        columns = [c["name"] for c in inspector.get_columns("patients")]
        assert columns == ["id", "clinic_id", "full_name", "ssn", "birth_date"]
        assert inspector.get_pk_constraint("patients")["constrained_columns"] == []
        assert "SELECT" in inspector.get_view_definition("patients").upper()
        metadata = sa.MetaData()
        metadata.reflect(eng, views=True)
        assert sorted(metadata.tables) == VIEWS
        qualified = sa.MetaData(schema="billing")
        qualified.reflect(eng, views=True)
        assert sorted(qualified.tables) == [f"billing.{v}" for v in VIEWS]
        with eng.connect() as conn:
            patients = metadata.tables["patients"]
            rows = conn.execute(sa.select(patients.c.id, patients.c.ssn)
                                .order_by(patients.c.id).limit(5)).all()
        assert [r.id for r in rows] == CLINIC_1 and all(len(r.ssn) == 64 for r in rows)
    finally:
        eng.dispose()


def test_sqlalchemy_orm_reads_a_view_with_an_explicit_primary_key(proxy: RunningProxy) -> None:
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy import orm

    class Base(orm.DeclarativeBase):
        pass

    class Patient(Base):
        __tablename__ = "patients"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)  # views have no key
        clinic_id: orm.Mapped[int]
        ssn: orm.Mapped[str]

    eng = engine(proxy, "orm-read")
    try:
        # reflection with an override: the reflected view plus the key the ORM needs
        reflected = sa.Table("visits", Base.metadata,
                             sa.Column("id", sa.BigInteger, primary_key=True),
                             autoload_with=eng)

        class Visit(Base):
            __table__ = reflected

        with orm.Session(eng) as session:
            patients = session.scalars(sa.select(Patient).order_by(Patient.id).limit(5)).all()
            assert [p.id for p in patients] == CLINIC_1
            assert {p.clinic_id for p in patients} == {1} and len(patients[0].ssn) == 64
            assert session.get(Patient, 2) is None  # clinic 2's patient does not exist here
            visit = session.scalars(sa.select(Visit).where(
                reflected.c.patient_id == 1).order_by(reflected.c.id)).first()
            assert visit is not None and visit.clinic_id == 1
            assert session.get(Visit, visit.id) is visit
            assert sorted(c.name for c in reflected.columns) == [
                "clinic_id", "id", "patient_id", "visited_at"]
    finally:
        eng.dispose()


def test_sqlalchemy_orm_inserts_through_a_writable_view(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy import orm

    class Base(orm.DeclarativeBase):
        pass

    class Claim(Base):
        __tablename__ = "claims"
        id: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, primary_key=True)
        patient_id: orm.Mapped[int]
        visit_id: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
        amount: orm.Mapped[decimal.Decimal] = orm.mapped_column(sa.Numeric(10, 2))
        code: orm.Mapped[str]
        # filled by the base table's default: the ORM must not send it (billing may not)
        status: orm.Mapped[str] = orm.mapped_column(server_default=sa.FetchedValue())

    eng = engine(proxy, "orm-write")
    try:
        with orm.Session(eng) as session:
            visit = session.execute(sa.text(
                "SELECT id FROM visits WHERE patient_id = 4 ORDER BY id LIMIT 1")).scalar_one()
            claims = [Claim(patient_id=4, visit_id=visit, amount=decimal.Decimal("42.10"),
                            code="ORM1"),
                      Claim(patient_id=7, amount=decimal.Decimal("5.00"), code="ORM1")]
            session.add_all(claims)
            session.commit()
            assert all(c.id > 0 for c in claims) and {c.status for c in claims} == {
                "submitted"}
            # a patient of another clinic fails the view's WITH CHECK (42501)
            session.add(Claim(patient_id=2, amount=decimal.Decimal(1), code="ORM1"))
            with pytest.raises(sa.exc.ProgrammingError) as refused:
                session.commit()
            assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
            session.rollback()
            mine = session.scalars(sa.select(Claim).where(Claim.code == "ORM1")
                                   .order_by(Claim.id)).all()
            assert [(c.patient_id, c.amount) for c in mine] == [
                (4, decimal.Decimal("42.10")), (7, decimal.Decimal("5.00"))]
    finally:
        eng.dispose()
    stored = applied_clinic.execute(
        "SELECT patient_id, visit_id IS NOT NULL, status FROM public.claims WHERE code = 'ORM1'"
        " ORDER BY id")
    assert stored == [(4, True, "submitted"), (7, False, "submitted")]
    changes = wait_for(lambda: applied_clinic.execute(
        "SELECT count(*) FROM audit.row_changes WHERE agent = 'orm-write' "
        "AND operation = 'INSERT'"))
    assert changes == [(2,)]


def test_sqlalchemy_error_in_a_transaction_keeps_its_class(proxy: RunningProxy) -> None:
    sa = pytest.importorskip("sqlalchemy")
    eng = engine(proxy, "sa-err")
    try:
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM patients")).scalar_one() == 100
            with pytest.raises(sa.exc.ProgrammingError) as failed:
                conn.execute(sa.text("SELECT nosuchcol FROM patients"))
            assert isinstance(failed.value.orig, psycopg.errors.UndefinedColumn)
            assert failed.value.orig.sqlstate == "42703"
            conn.rollback()
            with pytest.raises(sa.exc.ProgrammingError) as bound:
                conn.execute(sa.text("SELECT nosuchcol FROM patients WHERE id = :id"),
                             {"id": 1})
            assert isinstance(bound.value.orig, psycopg.errors.UndefinedColumn)
            conn.rollback()
            assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "billing"
    finally:
        eng.dispose()


def test_sqlalchemy_asyncio_with_asyncpg(proxy: RunningProxy) -> None:
    sa = pytest.importorskip("sqlalchemy")
    pytest.importorskip("asyncpg")
    pytest.importorskip("greenlet")
    from sqlalchemy import orm
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    class Base(orm.DeclarativeBase):
        pass

    class Patient(Base):
        __tablename__ = "patients"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        clinic_id: orm.Mapped[int]

    async def run() -> tuple[Any, ...]:
        eng = create_async_engine(url(proxy, "asyncpg", "sa-async"),
                                  connect_args={"ssl": False}, poolclass=sa.NullPool)
        try:
            async with eng.connect() as conn:
                views = await conn.run_sync(lambda c: sorted(sa.inspect(c).get_view_names()))
                tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
                metadata = sa.MetaData()
                await conn.run_sync(lambda c: metadata.reflect(c, views=True))
            async with AsyncSession(eng) as session:
                ids = (await session.scalars(
                    sa.select(Patient.id).order_by(Patient.id).limit(5))).all()
                with pytest.raises(sa.exc.ProgrammingError) as failed:
                    await session.execute(sa.text("SELECT nosuchcol FROM patients"))
                await session.rollback()
                after = (await session.execute(sa.text("SELECT count(*) FROM patients"))
                         ).scalar_one()
            return views, tables, sorted(metadata.tables), ids, failed.value, after
        finally:
            await eng.dispose()

    views, tables, reflected, ids, error, after = asyncio.run(run())
    assert views == VIEWS and tables == [] and reflected == VIEWS
    assert list(ids) == CLINIC_1 and after == 100
    assert error.orig.sqlstate == "42703"
    assert type(error.orig.__cause__).__name__ == "UndefinedColumnError"


# --- pandas -----------------------------------------------------------------------------


def test_pandas_read_sql_through_sqlalchemy_and_psycopg(proxy: RunningProxy) -> None:
    pd = pytest.importorskip("pandas")
    sa = pytest.importorskip("sqlalchemy")
    eng = engine(proxy, "pd-1")
    try:
        frame = pd.read_sql(sa.text("SELECT id, clinic_id, ssn FROM patients ORDER BY id"), eng)
        assert list(frame.columns) == ["id", "clinic_id", "ssn"] and len(frame) == 100
        assert frame["id"].head(5).tolist() == CLINIC_1 and set(frame["clinic_id"]) == {1}
        assert frame["ssn"].str.len().eq(64).all()
        table = pd.read_sql_table("patients", eng, schema="billing")
        assert list(table.columns) == ["id", "clinic_id", "full_name", "ssn", "birth_date"]
        assert len(table) == 100
        query = pd.read_sql_query(sa.text("SELECT count(*) AS n FROM visits WHERE "
                                          "patient_id = ANY(:ids)"), eng,
                                  params={"ids": CLINIC_1})
        assert int(query["n"].iloc[0]) > 0
    finally:
        eng.dispose()
    with psycopg.connect(proxy.dsn("pd-2", "billing", clinic_id=1)) as conn, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas prefers SQLAlchemy; it works
        direct = pd.read_sql("SELECT id FROM patients WHERE id = ANY(%(ids)s) ORDER BY id",
                             conn, params={"ids": [*CLINIC_1, 2]})
    assert direct["id"].tolist() == CLINIC_1


def test_pandas_to_sql_appends_through_a_writable_view(
    applied_clinic: Database, proxy: RunningProxy
) -> None:
    pd = pytest.importorskip("pandas")
    sa = pytest.importorskip("sqlalchemy")
    frame = pd.DataFrame({"patient_id": [1, 10, 13], "amount": [10.5, 20.25, 30.0],
                          "code": ["PDS", "PDS", "PDS"]})
    eng = engine(proxy, "pd-write")
    try:
        # pandas returns the driver's rowcount, -1 for psycopg's executemany (directly too)
        frame.to_sql("claims", eng, schema="billing", if_exists="append", index=False)
        back = pd.read_sql(sa.text("SELECT patient_id, amount, status FROM claims "
                                   "WHERE code = 'PDS' ORDER BY patient_id"), eng)
    finally:
        eng.dispose()
    assert back["patient_id"].tolist() == [1, 10, 13]
    assert [float(a) for a in back["amount"]] == [10.5, 20.25, 30.0]
    assert set(back["status"]) == {"submitted"}
    assert applied_clinic.execute(
        "SELECT count(*) FROM public.claims WHERE code = 'PDS'") == [(3,)]


# --- LangChain SQLDatabase --------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_langchain_sql_database(proxy: RunningProxy, driver: str) -> None:
    """What an LLM SQL agent's toolkit runs: reflection of the group's views, the table info
    it prompts with (DDL and three sample rows), and queries after ``SET search_path TO
    %s``, which needs client-side binding: psycopg2, or psycopg with its ClientCursor
    (PostgreSQL takes no parameter in SET)."""
    utilities = pytest.importorskip("langchain_community.utilities")
    sa = pytest.importorskip("sqlalchemy")
    if driver == "psycopg2":
        pytest.importorskip("psycopg2")
    eng = sa.create_engine(url(proxy, driver, f"lc-{driver}"), poolclass=sa.NullPool,
                           connect_args={} if driver == "psycopg2" else {
                               "cursor_factory": psycopg.ClientCursor})
    try:
        db = utilities.SQLDatabase(eng, schema="billing", view_support=True)
        assert sorted(db.get_usable_table_names()) == VIEWS
        assert db.run("SELECT count(*) FROM patients") == "[(100,)]"
        info = db.get_table_info(["patients"])
        assert "CREATE TABLE billing.patients" in info and "3 rows from patients" in info
        assert "ssn" in info and "email" not in info  # what the group cannot read is absent
        assert "Error" in db.run_no_throw("SELECT nosuchcol FROM patients")
        assert db.run("SELECT current_user") == "[('billing',)]"
    finally:
        eng.dispose()
