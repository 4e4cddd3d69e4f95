"""``policyc audit``: prove the audit trail intact, seal and sign it, prune it by retention.

The work happens in SQL (runtime 0.3.0: ``audit.verify()``, ``audit.checkpoint()``,
``audit.prune()``), so an auditor gets the same answer from psql as from this command.  What
only lives here is the part that must stay outside the database: signing a checkpoint with a
key the DBA does not hold, and checking a signed export against the database later.  A DBA
who rewrites history must recompute the checkpoint hashes, and those then differ from the
hashes someone signed before.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policyc.connect import connect as connect_as
from policyc.errors import PolicycError
from policyc.policy import load_policy
from policyc.policy.durations import UnitError, parse_duration

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 64
EXPORT_FORMAT = "policyc-checkpoint/1"
DEFAULT_RETENTION = "6y"


class AuditTrailError(PolicycError):
    code = "audit"


@dataclass(frozen=True)
class Problem:
    """One sign of tampering, as audit.verify() reports it."""

    problem: str  # altered | removed | duplicate | inserted
    table: str
    record: str | None
    chain: str | None
    seq: int | None
    at: dt.datetime | None
    detail: str

    def text(self) -> str:
        where = f"audit.{self.table}" if self.table != "checkpoints" else "audit.checkpoints"
        parts = [f"{self.problem}: {where}"]
        if self.record:
            parts.append(f"record {self.record}")
        if self.chain:
            parts.append(f"chain {self.chain}" + (f" position {self.seq}" if self.seq is not None
                                                   else ""))
        if self.at:
            parts.append(f"at {self.at.isoformat()}")
        return ", ".join(parts) + f": {self.detail}"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat() if self.at else None
        return data


@dataclass(frozen=True)
class Pruned:
    table: str
    partition: str
    range_from: dt.datetime
    range_to: dt.datetime
    rows: int


# --- database side --------------------------------------------------------------------------
def _require_runtime(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT to_regprocedure('audit.verify(timestamptz)') IS NOT NULL").fetchone()
    if row != (True,):
        raise AuditTrailError("this database has no policyc audit trail of runtime 0.3.0 or "
                              "later: run `policyc apply` first")


def verify(conn: psycopg.Connection[Any], since: dt.datetime | None = None) -> list[Problem]:
    """Every problem audit.verify() finds, oldest first (empty: the trail is intact)."""
    _require_runtime(conn)
    with conn.transaction():
        rows = conn.execute(
            "SELECT problem, table_name, record, chain, seq, at, detail FROM audit.verify(%s)",
            (since,)).fetchall()
    return [Problem(*row) for row in rows]


def checkpoint(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Seal what is new (if anything) and return the newest checkpoint."""
    _require_runtime(conn)
    with conn.transaction():
        conn.execute("SELECT audit.checkpoint()")
    latest = latest_checkpoint(conn)
    if latest is None:
        raise AuditTrailError("the audit trail has no checkpoint yet")
    return latest


def latest_checkpoint(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    row = conn.execute("SELECT id, at, kind, elements, hash FROM audit.checkpoints "
                       "ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    return {"id": row[0], "at": row[1].isoformat(), "kind": row[2], "elements": row[3],
            "hash": bytes(row[4]).hex()}


def prune(conn: psycopg.Connection[Any], retention_seconds: int, *, now: dt.datetime | None,
          dry_run: bool, lock_timeout_ms: int = 10_000) -> list[Pruned]:
    """Drop (or, dry, list) the monthly partitions older than the retention."""
    _require_runtime(conn)
    with conn.transaction():
        # dropping a partition locks the audit table: give up rather than queue every audit
        # write behind a long transaction that still reads an old month
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        rows = conn.execute(
            "SELECT table_name, partition_name, range_from, range_to, rows "
            "FROM audit.prune(make_interval(secs => %s), coalesce(%s, now()), %s)",
            (retention_seconds, now, dry_run)).fetchall()
    return [Pruned(*row) for row in rows]


# --- signing --------------------------------------------------------------------------------
def _canonical(document: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: Path) -> Path:
    """Write a new Ed25519 signing key (mode 0600) and its public key beside it."""
    if path.exists():
        raise AuditTrailError(f"{path}: already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def _private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditTrailError(f"{path}: not an Ed25519 private key (make one with "
                              "`policyc audit keygen`)")
    return key


def _public_key(path: Path) -> Ed25519PublicKey:
    data = path.read_bytes()
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AuditTrailError(f"{path}: not an Ed25519 public key")
    return key


def _database(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    database: dict[str, Any] = {"name": conn.info.dbname}
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        database["system_identifier"] = row[0] if row else None
    except psycopg.errors.InsufficientPrivilege:
        database["system_identifier"] = None
    return database


def export_checkpoint(conn: psycopg.Connection[Any], key_path: Path) -> dict[str, Any]:
    """The newest checkpoint as a signed document to keep outside the database."""
    key = _private_key(key_path)
    latest = checkpoint(conn)
    document: dict[str, Any] = {"format": EXPORT_FORMAT, "database": _database(conn), **latest}
    document["signature"] = {
        "algorithm": "Ed25519", "key_id": _key_id(key.public_key()),
        "value": base64.b64encode(key.sign(_canonical(document))).decode(),
    }
    return document


def check_export(conn: psycopg.Connection[Any], document: dict[str, Any],
                 public: Ed25519PublicKey, source: str) -> list[Problem]:
    """Problems between a signed export and the database (empty: it still matches)."""
    if document.get("format") != EXPORT_FORMAT:
        raise AuditTrailError(f"{source}: not a policyc checkpoint export")
    signature = document.get("signature") or {}
    try:
        public.verify(base64.b64decode(str(signature.get("value", ""))), _canonical(document))
    except (InvalidSignature, ValueError) as exc:
        raise AuditTrailError(f"{source}: the signature does not verify with this public key; "
                              "the export was changed or signed by another key") from exc
    row = conn.execute("SELECT hash, at FROM audit.checkpoints WHERE id = %s",
                       (document["id"],)).fetchone()
    at = dt.datetime.fromisoformat(document["at"])
    if row is None:
        return [Problem("removed", "checkpoints", str(document["id"]), None, None, at,
                        f"checkpoint {document['id']} signed in {source} is gone")]
    if bytes(row[0]).hex() != document["hash"]:
        return [Problem("altered", "checkpoints", str(document["id"]), None, None, at,
                        f"checkpoint {document['id']} differs from the one signed in {source}: "
                        "history before it was rewritten")]
    return []


# --- command line ---------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    public = _public_key(Path(args.public_key)) if args.public_key else None
    if args.trusted and public is None:
        print("policyc audit verify: --trusted needs --public-key", file=sys.stderr)
        return EXIT_USAGE
    with connect_as(args.dsn, "policyc audit") as conn:
        problems = verify(conn, args.since)
        for path in args.trusted:
            document = json.loads(Path(path).read_text())
            assert public is not None
            problems.extend(check_export(conn, document, public, path))
        latest = latest_checkpoint(conn)
        # an entry stands for positions seq..last_seq (runtime 0.6.0; before it, one each)
        unsealed = conn.execute(
            "SELECT coalesce(sum(coalesce((pg_catalog.to_jsonb(q) ->> 'last_seq')::bigint, "
            "q.seq) - q.seq + 1), 0) FROM audit.seal_queue q").fetchone()
    if args.json:
        print(json.dumps({"intact": not problems, "problems": [p.as_json() for p in problems],
                          "latest_checkpoint": latest,
                          "unsealed": unsealed[0] if unsealed else None}, indent=2), file=out)
    elif problems:
        print(f"audit trail BROKEN: {len(problems)} problem(s); the first:", file=out)
        print(f"  {problems[0].text()}", file=out)
        for problem in problems[1:args.limit]:
            print(f"  {problem.text()}", file=out)
        if len(problems) > args.limit:
            print(f"  ... and {len(problems) - args.limit} more (--json lists all)", file=out)
    else:
        sealed = (f"; sealed up to checkpoint {latest['id']} ({latest['at']})" if latest
                  else "; no checkpoint yet")
        waiting = f", {unsealed[0]} record(s) waiting for the next seal" if unsealed else ""
        scope = f" since {args.since.isoformat()}" if args.since else ""
        print(f"audit trail intact{scope}{sealed}{waiting}", file=out)
    return EXIT_BROKEN if problems else EXIT_OK


def cmd_checkpoint(args: argparse.Namespace, out: TextIO) -> int:
    with connect_as(args.dsn, "policyc audit") as conn:
        if args.sign:
            document = export_checkpoint(conn, Path(args.sign))
            text = json.dumps(document, indent=2)
            if args.out:
                Path(args.out).write_text(text + "\n")
                print(f"checkpoint {document['id']} signed into {args.out}", file=out)
            else:
                print(text, file=out)
            return EXIT_OK
        latest = checkpoint(conn)
    print(json.dumps(latest) if args.json else
          f"checkpoint {latest['id']} ({latest['kind']}, {latest['at']}): {latest['hash']}",
          file=out)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    public = generate_key(Path(args.path))
    print(f"signing key written to {args.path} (keep it away from the database and its DBAs); "
          f"public key: {public}", file=out)
    return EXIT_OK


def _retention(args: argparse.Namespace) -> int:
    if args.retention:
        try:
            return parse_duration(args.retention)
        except UnitError as exc:
            raise AuditTrailError(f"--retention: {exc}") from exc
    if args.policy:
        return load_policy(Path(args.policy)).audit.retention_seconds
    return parse_duration(DEFAULT_RETENTION)


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    retention = _retention(args)
    with connect_as(args.dsn, "policyc audit") as conn:
        try:
            pruned = prune(conn, retention, now=args.now, dry_run=args.dry_run)
        except psycopg.errors.InvalidParameterValue as exc:
            raise AuditTrailError(exc.diag.message_primary or str(exc)) from exc
        except psycopg.errors.LockNotAvailable as exc:
            raise AuditTrailError("an old audit partition is in use (its lock did not come "
                                  "within 10 s); nothing was pruned: try again at a quieter "
                                  "time") from exc
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "retention_seconds": retention,
                          "partitions": [{**asdict(p), "range_from": p.range_from.isoformat(),
                                          "range_to": p.range_to.isoformat()} for p in pruned]},
                         indent=2), file=out)
        return EXIT_OK
    verb = "would drop" if args.dry_run else "dropped"
    if not pruned:
        print(f"nothing to prune: no audit partition ends more than {retention // 86400} days "
              "ago", file=out)
    for p in pruned:
        print(f"{verb} audit.{p.partition} ({p.range_from:%Y-%m-%d} to {p.range_to:%Y-%m-%d}, "
              f"{p.rows} rows)", file=out)
    if pruned and not args.dry_run:
        print("recorded in audit.prunes (and in the checkpoint chain)", file=out)
    return EXIT_OK
