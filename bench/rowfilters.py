"""What row filters built on ``policyc.claim()`` cost on billing's write path, against the
same filters with the claim written as a literal (issue #14).

One database holds the clinic example; the policy is applied in two variants that differ only
in billing's row filters: as shipped (``policyc.claim('clinic_id')::int``) and with ``1``
(billing's clinic) in its place.  Each round applies one variant, opens a fresh session as
the ``billing`` group role (identity registered with the bench claims, as the data-path
baselines do), warms up, then times the write path transaction by transaction:

    SELECT a clinic-1 patient joined to its first visit (through billing's views);
    INSERT a claim for them RETURNING id; UPDATE that claim's status; COMMIT

each statement on its own (server-side prepared, as pgbench ``-M prepared``), at the libpq
level.  Variants alternate and their order rotates between rounds.  Medians of every timed
transaction of a variant; the ratio claim / literal is issue #14's target (≤ 1.2).

Also recorded, per variant, outside the timed runs: how many times one transaction calls
``policyc.claim()`` (``pg_stat_xact_user_functions``, with ``track_functions = all``), which is
what the ratio is made of.  ``python bench/rowfilters.py`` runs this alone on its own
throwaway cluster and prints the result as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from common import CLUSTER_SETTINGS, POLICY, rotate, setup_clinic

from policyc.apply import apply_policy
from policyc.devcluster import throwaway_cluster
from policyc.policy import load_policy
from policyc.policy.model import Policy

Log = Callable[[str], None]
VARIANTS = ("claim", "literal")
GROUP = "billing"
CLAIM = "policyc.claim('clinic_id')::int"
LITERAL = "1"  # billing's clinic in bench/identity.sql
STATEMENTS = (
    ("select", "SELECT p.id, p.full_name, p.birth_date, v.id AS visit_id FROM patients p "
               "JOIN visits v ON v.patient_id = p.id WHERE p.id = %s ORDER BY v.id LIMIT 1"),
    ("insert", "INSERT INTO claims (patient_id, visit_id, amount, code) "
               "VALUES (%s, %s, 120.00, '99213') RETURNING id"),
    ("update", "UPDATE claims SET status = 'accepted' WHERE id = %s"),
)
# this cluster only: count policyc.claim() calls (bench settings otherwise)
SETTINGS = {**CLUSTER_SETTINGS, "track_functions": "all"}


def literal_policy(policy: Policy) -> Policy:
    """``policy`` with every ``policyc.claim('clinic_id')::int`` of billing's row filters
    written as billing's clinic; every other group unchanged."""
    group = policy.group(GROUP)
    rows = {table: text.replace(CLAIM, LITERAL) for table, text in group.rows.items()}
    left = [str(t) for t, text in rows.items() if "policyc." in text]
    if left or rows == dict(group.rows):
        raise RuntimeError(f"billing's filters did not turn into literals: {left}")
    return dataclasses.replace(policy, groups=tuple(
        dataclasses.replace(g, rows=rows) if g is group else g for g in policy.groups))


def use_variant(owner: psycopg.Connection[Any], policy: Policy) -> None:
    """Apply ``policy``; give billing back the bench identity function apply revokes (a grant
    policyc does not manage)."""
    apply_policy(owner, policy)
    owner.execute("GRANT USAGE ON SCHEMA bench_identity TO billing")
    owner.execute("GRANT EXECUTE ON FUNCTION bench_identity.register_self() TO billing")


def _patients(owner: psycopg.Connection[Any]) -> list[int]:
    rows = owner.execute("SELECT id FROM public.patients WHERE clinic_id = 1 ORDER BY id")
    return [int(r[0]) for r in rows.fetchall()]


def transaction(conn: psycopg.Connection[Any], patient: int) -> dict[str, float]:
    """One write path; seconds per statement and the commit."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    row = conn.execute(STATEMENTS[0][1], (patient,), prepare=True).fetchone()
    seconds["select"] = time.perf_counter() - start
    if row is None:
        raise RuntimeError(f"billing sees no visit of patient {patient}")
    start = time.perf_counter()
    claim = conn.execute(STATEMENTS[1][1], (patient, row[3]), prepare=True).fetchone()
    seconds["insert"] = time.perf_counter() - start
    if claim is None:
        raise RuntimeError("the claim insert returned no id")
    start = time.perf_counter()
    cur = conn.execute(STATEMENTS[2][1], (claim[0],), prepare=True)
    seconds["update"] = time.perf_counter() - start
    if cur.rowcount != 1:
        raise RuntimeError(f"the status update changed {cur.rowcount} rows, not 1")
    start = time.perf_counter()
    conn.commit()
    seconds["commit"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return seconds


def claim_calls(conn: psycopg.Connection[Any], patient: int) -> int:
    """policyc.claim() calls of one write path (rolled back), from the function statistics
    of the transaction so far (track_functions = all)."""
    counted = "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions " \
              "WHERE schemaname = 'policyc' AND funcname = 'claim'"
    before = conn.execute(counted).fetchone()
    row = conn.execute(STATEMENTS[0][1], (patient,)).fetchone()
    assert row is not None
    claim = conn.execute(STATEMENTS[1][1], (patient, row[3])).fetchone()
    assert claim is not None
    conn.execute(STATEMENTS[2][1], (claim[0],))
    after = conn.execute(counted).fetchone()
    conn.rollback()
    return int(after[0] if after else 0) - int(before[0] if before else 0)


def measure(owner_dsn: str, billing_dsn: str, *, rounds: int, transactions: int,
            log: Log) -> dict[str, Any]:
    """Rounds of both variants, alternating; medians, ratios and claim() calls."""
    shipped = load_policy(POLICY)
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        database = owner.info.dbname
        policies = {"claim": dataclasses.replace(shipped, database=database),
                    "literal": dataclasses.replace(literal_policy(shipped), database=database)}
        patients = _patients(owner)
        times: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        calls: dict[str, int] = {}
        warmup = max(5, transactions // 10)
        for rnd in range(rounds):
            for variant in rotate(VARIANTS, rnd):
                use_variant(owner, policies[variant])
                owner.execute("VACUUM ANALYZE public.claims")
                with psycopg.connect(billing_dsn) as conn:
                    conn.execute("SELECT bench_identity.register_self()")
                    conn.commit()
                    calls[variant] = claim_calls(conn, patients[0])
                    for i in range(warmup + transactions):
                        seconds = transaction(conn, patients[(i * 7919) % len(patients)])
                        if i < warmup:
                            continue
                        for part, value in seconds.items():
                            times[variant].setdefault(part, []).append(value)
                med = statistics.median(times[variant]["total"][-transactions:])
                log(f"  row filters {variant:<7} round {rnd + 1}: {med * 1000:.3f} ms a "
                    f"transaction, {calls[variant]} policyc.claim() calls")
        use_variant(owner, policies["claim"])  # leave the database as shipped
    medians = {v: {part: statistics.median(ts) * 1000 for part, ts in parts.items()}
               for v, parts in times.items()}
    ratios = {part: medians["claim"][part] / medians["literal"][part]
              for part in medians["claim"]}
    return {"patients_of_clinic": len(patients), "rounds": rounds,
            "transactions_per_round": transactions, "ms": medians, "ratios": ratios,
            "claim_calls_per_transaction": calls,
            "filters": {str(t): text for t, text in shipped.group(GROUP).rows.items()}}


def on_own_cluster(patients: int, rounds: int, transactions: int, log: Log) -> dict[str, Any]:
    """The clinic example with ``patients`` patients on a throwaway cluster (the benchmark's
    settings plus ``track_functions = all``), measured by :func:`measure`."""
    with throwaway_cluster(SETTINGS) as cluster:
        setup_clinic(cluster, patients=patients)
        return measure(cluster.dsn("clinic"), cluster.dsn("clinic", user=GROUP),
                       rounds=rounds, transactions=transactions, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/rowfilters.py``: billing's write path through row filters with the claim
    and with a literal, alone on its own throwaway cluster; prints the result as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--patients", type=int, default=3000, help="clinic patients (3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both variants (3)")
    parser.add_argument("--transactions", type=int, default=300,
                        help="timed write paths per variant and round (300)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = on_own_cluster(args.patients, args.rounds, args.transactions, log)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
