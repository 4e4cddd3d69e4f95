"""What the audit spool costs the event loop: group commit inline vs on the spool thread.

N concurrent asyncio "sessions" each spool a statement's begin and wait until it is durable,
then queue its end (as the proxy does), for a fixed time.  Reported per mode and N: records/s
and the event loop's busy time per record (wall time minus the time the loop sat in
``select``), and, once, the cost of encoding one record (hot path and generic encoder).

Run: ``.venv/bin/python bench/spoolcost.py [--seconds 3] [--clients 1 16] [--dir DIR]``.
The audit database is unreachable on purpose (nothing is drained): this measures the spool
alone.  Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from policyc.devcluster import free_port
from policyc.proxy.audit import AuditLog
from policyc.proxy.audit.events import (
    begin_event,
    begin_line,
    encode_event,
    end_event,
    end_line,
)
from policyc.proxy.audit.records import StatementOutcome, StatementRecord

TEXT = "SELECT id, name, dob FROM research.patients_masked WHERE id = $1"


def record(session: uuid.UUID, seq: int) -> StatementRecord:
    return StatementRecord(uuid.uuid4(), session, seq, time.time(), "agent-7", "research",
                           TEXT, "masked", [str(seq)], "fp0123456789abcdef", "select",
                           ("research.patients_masked",), ("research.patients_masked.name",))


class _TimedSelector(selectors.DefaultSelector):
    """The default selector, adding up the time spent waiting in ``select``."""

    waited = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        start = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.waited += time.perf_counter() - start


async def _session(log: AuditLog, deadline: float, counts: list[int]) -> None:
    session = uuid.uuid4()
    seq = 0
    while time.perf_counter() < deadline:
        seq += 1
        rec = record(session, seq)
        await log.spool_statement(rec)
        log.finish_statement(StatementOutcome(rec.record_id, 1, 0.2))
        counts[0] += 1


async def _run(spool: Path, clients: int, seconds: float, inline: bool) -> dict[str, Any]:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=nowhere user=nobody"
    log = AuditLog(dsn, spool, proxy_name="spoolcost", inline=inline, db_timeout=0.2,
                   drain_interval=3600.0, max_spool_bytes=8 << 30)
    await log.start()
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    counts = [0]
    try:
        await asyncio.sleep(0.2)  # the preallocator's first segment
        waited0, start = selector.waited, time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_session(log, deadline, counts) for _ in range(clients)))
        wall = time.perf_counter() - start
        busy = wall - (selector.waited - waited0)
        stats = log.stats()
    finally:
        await log.abort()
    return {"mode": "inline" if inline else "thread", "clients": clients,
            "records_per_s": round(counts[0] / wall), "fsyncs": stats["fsyncs"],
            "records_per_fsync": round(counts[0] / max(1, stats["fsyncs"]), 2),
            "loop_busy_us_per_record": round(busy / max(1, counts[0]) * 1e6, 1)}


def encode_cost(count: int = 20000) -> dict[str, float]:
    """Microseconds to encode one begin line and one end line: hot path and generic
    encoder, on records built (and their keys computed) beforehand."""
    session = uuid.uuid4()
    recs = [record(session, i) for i in range(1, count + 1)]
    outs = [StatementOutcome(r.record_id, 1, 0.2) for r in recs]
    for rec, out in zip(recs, outs, strict=True):
        _ = rec.record_key, out.record_key
    timings: dict[str, float] = {}
    for name, encode in (
            ("begin_line_us", lambda i: begin_line(recs[i])),
            ("generic_begin_us", lambda i: encode_event(begin_event(recs[i]))),
            ("end_line_us", lambda i: end_line(outs[i])),
            ("generic_end_us", lambda i: encode_event(end_event(outs[i])))):
        start = time.perf_counter()
        for i in range(count):
            encode(i)
        timings[name] = round((time.perf_counter() - start) / count * 1e6, 2)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per mode")
    parser.add_argument("--dir", type=Path, default=None, help="where the spools go")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for clients in args.clients:
        for _ in range(args.rounds):
            for inline in (True, False):
                with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                    loop = asyncio.SelectorEventLoop(_TimedSelector())
                    try:
                        results.append(loop.run_until_complete(
                            _run(Path(tmp) / "spool", clients, args.seconds, inline)))
                    finally:
                        loop.close()
                print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"encode": encode_cost()}), flush=True)


if __name__ == "__main__":
    main()
