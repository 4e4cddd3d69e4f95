"""The masks are written out inline in the views (no runtime function per row); each must return
exactly what the runtime's reference functions return, for every awkward value: NULLs, empty
strings, unicode, short and odd ZIPs, ages 89/90/91, birth dates on both sides of the 90-year
edge, leap days, infinities, BC dates, in several time zones.  ASCII values are also checked
against the independent Python oracle."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import Database
from masks_oracle import Oracle
from policyc.apply import apply_policy
from policyc.policy import load_policy_text

SCHEMA = """
CREATE TABLE public.people (
    id       int PRIMARY KEY,
    name     text,
    name_vc  varchar(40),
    zip      text,
    zip_vc   varchar(12),
    ssn      text,
    n2       smallint,
    n4       integer,
    n8       bigint,
    u        uuid,
    born     date,
    born_m   date,
    seen     timestamp,
    seen_tz  timestamptz,
    age      integer,
    age2     smallint,
    age8     bigint,
    agen     numeric(5,1),
    born90   date,
    note     text,
    score    integer
);
"""

MASKS = {
    "name": "partial", "name_vc": "partial", "zip": "zip3", "zip_vc": "zip3", "ssn": "hash",
    "n2": "hash", "n4": "hash", "n8": "hash", "u": "hash", "born": "year", "born_m": "month",
    "seen": "month", "seen_tz": "year", "age": "age90", "age2": "age90", "age8": "age90",
    "agen": "age90", "born90": "age90", "note": "redact", "score": "null",
}

POLICY = """\
version: 1
database: {database}
phi:
  public.people:
{phi}
groups:
  viewer:
    oidc_groups: [viewers]
    read:
      public.people: "*"
"""

# What the views returned before the masks were written out inline: the runtime's functions.
_HMAC = "policyc.hmac_hex(k.ipad, k.opad, ({})::text)"
REFERENCE = {
    "partial": "policyc.mask_partial(({})::text)",
    "zip3": "policyc.mask_zip3(({})::text)",
    "hash": _HMAC,
    "hash_int": f"CAST(CAST(('x' || left({_HMAC}, 16)) AS bit(64)) AS bigint)",
    "hash_uuid": f"CAST(left({_HMAC}, 32) AS uuid)",
    "year_date": "CAST(date_trunc('year', {}) AS date)",
    "month_date": "CAST(date_trunc('month', {}) AS date)",
    "month": "date_trunc('month', {})",
    "year": "date_trunc('year', {})",
    "age90": "policyc.mask_age90({})",
    "redact": "CAST(CASE WHEN {} IS NULL THEN NULL ELSE '[REDACTED]' END AS text)",
    "null": "NULL",
}
TYPES = {
    "name": "text", "name_vc": "text", "zip": "text", "zip_vc": "text", "ssn": "text",
    "n2": "int2", "n4": "int4", "n8": "int8", "u": "uuid", "born": "date", "born_m": "date",
    "seen": "timestamp", "seen_tz": "timestamptz", "age": "int4", "age2": "int2", "age8": "int8",
    "agen": "numeric", "born90": "date", "note": "text", "score": "int4",
}

NAMES = [
    None, "", "Kofi Elmwick", "J Smith", "A", "A B C", "Mary-Jane O'Brien", "José Álvarez",
    "Ødegaard Ærø", " leading", "trailing ", "a  b", "x_y z", "123 456", "Émile Zola",
    "李 小龙", "Ann\tLee", "Ann\nLee", "Ann Lee\n", "\nAnn Lee", "ANN LEE", "ann lee",
    "Ab Cd Ef", "O9 K", "Ab1 Cd", "Ab ", " Ab Cd", "Straße Öl", "\u0130stanbul Il\u0131k",
    "Kelvin \u212a", "ab\u0301c de",
]
ZIPS = [
    None, "", "1", "12", "123", "12345", "02139", "12345-6789", "03612", "036", "893", "89312",
    "059xx", " 02139", "ab123", "a1b2c3", "1-2-3", "12a34", "00000",
    "\uff11\uff12\uff13\uff14\uff15", "\u0660\u0661\u0662\u0663\u0664",
    "é12345", "ZIP 60601", "6060", "\n123", "123\n", "xyz", "0", "99999", "82 3", "8-2-3-1",
    "12\u00b3", "\u0663\u0660\u0665",
]
SSNS = [None, "", "123-45-6789", "ü", "x" * 300, "O'Brien", "\\x41", "tab\there", "日本"]
INTS = [None, 0, -1, 1, 42, 89, 90, 91, 32767, -32768]
BIGS = [None, 0, -1, 91, 2**31, -(2**63), 2**63 - 1]
INT4S = [None, 0, -1, 89, 90, 91, 2**31 - 1, -(2**31)]
NUMS = [None, "89.9", "90.0", "90.1", "NaN", "-1.5", "0", "9999.9"]
DATES = [
    None, "2000-02-29", "1999-12-31", "2001-01-01", "0001-01-01", "0044-03-15 BC",
    "infinity", "-infinity", "1970-01-01", "1900-02-28", "2024-02-29", "1883-11-18",
]
STAMPS = [
    None, "2000-02-29 23:59:59.999999", "1999-12-31 00:00", "infinity", "-infinity",
    "0044-03-15 12:00 BC", "2024-03-10 02:30", "1970-01-01 00:00",
]
UUIDS = [None, str(uuid.UUID(int=0)), "6f1c0a1e-4d2b-4c8f-9a55-3b1f2e6d7c80"]
ZONES = ["UTC", "America/Sao_Paulo", "Pacific/Apia", "Asia/Kathmandu"]


def _age90_dates(today: dt.date) -> list[str | None]:
    def years_ago(n: int) -> dt.date:
        try:
            return today.replace(year=today.year - n)
        except ValueError:  # today is 29 February
            return today.replace(year=today.year - n, day=28)

    edge = years_ago(90)
    days = [edge, edge - dt.timedelta(days=1), edge + dt.timedelta(days=1),
            years_ago(89), years_ago(91), edge.replace(month=1, day=1),
            edge.replace(month=12, day=31), today, dt.date(1932, 2, 29), dt.date(1936, 2, 29),
            dt.date(1936, 3, 1), dt.date(1936, 2, 28)]
    return [None, "infinity", "-infinity", *(d.isoformat() for d in days)]


def _rows(today: dt.date) -> list[dict[str, Any]]:
    columns: dict[str, list[Any]] = {
        "name": NAMES, "name_vc": NAMES, "zip": ZIPS, "zip_vc": ZIPS, "ssn": SSNS, "n2": INTS,
        "n4": INT4S, "n8": BIGS, "u": UUIDS, "born": DATES, "born_m": DATES, "seen": STAMPS,
        "seen_tz": STAMPS, "age": INT4S, "age2": INTS, "age8": BIGS, "agen": NUMS,
        "born90": _age90_dates(today), "note": NAMES, "score": INTS,
    }
    count = max(len(v) for v in columns.values())
    rows = []
    for i in range(count):
        row: dict[str, Any] = {"id": i}
        for name, values in columns.items():
            # every value once in row order, then every value again next to other values
            row[name] = values[i] if i < len(values) else values[(i * 7) % len(values)]
        rows.append(row)
    return rows


def _reference(column: str) -> str:
    mask = MASKS[column]
    kind = TYPES[column]
    ref = f"t.{column}"
    if mask == "hash" and kind in ("int2", "int4", "int8"):
        return REFERENCE["hash_int"].format(ref, ref, ref)
    if mask == "hash" and kind == "uuid":
        return REFERENCE["hash_uuid"].format(ref, ref, ref)
    if mask in ("year", "month") and kind == "date":
        return REFERENCE[f"{mask}_date"].format(ref)
    if mask == "age90" and kind != "date":  # cast to the column's type, typmod included
        return f"CAST(policyc.mask_age90({ref}) AS {'numeric(5,1)' if kind == 'numeric' else kind})"
    return REFERENCE[mask].format(ref)


@pytest.fixture
def people(db: Database) -> tuple[Database, list[dict[str, Any]]]:
    with db.connect() as conn:
        conn.execute(SCHEMA.encode())
        today = conn.execute("SELECT CURRENT_DATE").fetchone()
        assert today is not None
        rows = _rows(today[0])
        names = ["id", *MASKS]
        insert = sql.SQL("INSERT INTO public.people ({}) VALUES ({})").format(
            sql.SQL(", ").join(sql.Identifier(n) for n in names),
            sql.SQL(", ").join(sql.Placeholder() for _ in names),
        )
        with conn.cursor() as cur:
            for row in rows:
                cur.execute(insert, [row[n] for n in names])
        phi = "\n".join(f"    {column}: \"{mask}\"" for column, mask in MASKS.items())
        policy = load_policy_text(POLICY.format(database=db.name, phi=phi))
        apply_policy(conn, policy)
    return db, rows


def _as_text(conn: psycopg.Connection[Any], query: sql.Composed) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


@pytest.mark.parametrize("zone", ZONES)
def test_inline_masks_return_what_the_reference_functions_return(
    people: tuple[Database, list[dict[str, Any]]], zone: str
) -> None:
    db, rows = people
    columns = list(MASKS)
    shown = sql.SQL(", ").join(
        sql.SQL("(p.{})::text").format(sql.Identifier(c)) for c in ["id", *columns])
    with db.connect("viewer") as agent, db.connect() as admin:
        for conn in (agent, admin):
            conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        seen = _as_text(agent, sql.SQL("SELECT {} FROM people AS p ORDER BY p.id").format(shown))
        expected = _as_text(admin, sql.SQL(
            "SELECT t.id::text, {} FROM public.people t, policyc.hmac_key k ORDER BY t.id"
        ).format(sql.SQL(", ").join(
            sql.SQL("({})::text").format(sql.SQL(_reference(c))) for c in columns)))
    assert len(seen) == len(rows) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        for column, g, w in zip(["id", *columns], got, want, strict=True):
            assert g == w, (zone, column, rows[int(got[0])][column] if column != "id" else g)


def test_ascii_values_match_the_python_oracle(
    people: tuple[Database, list[dict[str, Any]]]
) -> None:
    db, _ = people
    checked: set[str] = set()
    with db.connect() as admin, db.connect("viewer") as agent:
        agent.execute("SET TimeZone = 'UTC'")
        admin.execute("SET TimeZone = 'UTC'")
        ipad = admin.execute("SELECT ipad FROM policyc.hmac_key").fetchone()
        assert ipad is not None
        oracle = Oracle(bytes(ipad[0]))
        for column, mask in MASKS.items():
            name = sql.Identifier(column)
            # Python has no infinite or BC dates
            finite = (sql.SQL("isfinite({0}) AND {0} >= '0001-01-01'").format(name)
                      if TYPES[column] in ("date", "timestamp", "timestamptz")
                      else sql.SQL("true"))
            raw = dict(admin.execute(sql.SQL(
                "SELECT id, {0} FROM public.people WHERE {0} IS NULL OR ({1})").format(
                    name, finite)).fetchall())
            seen = agent.execute(sql.SQL("SELECT id, {} FROM people WHERE id = ANY(%s)").format(
                name), (list(raw),)).fetchall()
            assert len(seen) == len(raw) > 0
            for row_id, got in seen:
                value = raw[row_id]
                if isinstance(value, str) and not value.isascii():
                    continue  # \w and \D follow the database's locale there, not Python's
                if mask == "age90" and isinstance(value, Decimal) and value.is_nan():
                    expected: Any = 90  # least(NaN, 90): NaN sorts above every number
                else:
                    expected = oracle.expected(mask, value, TYPES[column])
                assert got == expected, (column, value)
                checked.add(mask)
    assert checked == set(MASKS.values())


def test_views_read_no_runtime_mask_function(
    people: tuple[Database, list[dict[str, Any]]]
) -> None:
    db, _ = people
    used = db.execute(
        "SELECT DISTINCT p.proname FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
        "JOIN pg_proc p ON p.oid = d.refobjid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_proc'::regclass "
        "AND r.ev_class = 'viewer.people'::regclass AND p.pronamespace = 'policyc'::regnamespace"
    )
    assert used == []
