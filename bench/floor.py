"""The proxy's per-statement floor on this machine: one durable spool flush.

Every statement's record is made durable (written and ``fdatasync``'ed) before the statement
can matter, so at one client no proxy can add less than one flush to a statement whose
answer depends on it.  Measured with the proxy's own :class:`policyc.proxy.audit.spool.Spool`
(preallocated segments, as the proxy runs it) in the directory the proxy's spool uses, on a
quiet machine, before the data-path runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from policyc.proxy.audit.spool import Spool

#: About the size of one statement's begin line in the spool.
LINE = b'{"e":"begin","text":"' + b"x" * 400 + b'"}\n'


def spool_flush(directory: Path, count: int = 1000) -> dict[str, Any]:
    """Median and p99 microseconds of one append+fdatasync of a statement-sized line."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        spool = Spool(Path(tmp) / "spool")
        spool.open()
        try:
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                spool.append(LINE)
                samples.append((time.perf_counter() - start) * 1e6)
        finally:
            spool.close()
    samples.sort()
    return {"count": count, "bytes": len(LINE), "median_us": statistics.median(samples),
            "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}
