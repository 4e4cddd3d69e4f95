"""``policyc report``: the HIPAA evidence pack for a period, as one HTML file and as JSON.

Run by a member of ``policyc_auditor``; it only reads (one ``REPEATABLE READ READ ONLY``
transaction, see :mod:`policyc.report.gather`) and works on a read replica, where only the
integrity check (``audit.verify()``, which needs temporary tables) says "not checked".

* :mod:`~policyc.report.gather` runs the named queries of ``sql/report/`` and returns rows;
* :mod:`~policyc.report.sections` and :mod:`~policyc.report.policyview` turn rows and the
  policy into sections of figures, tables and verdicts (:mod:`~policyc.report.model`);
* :mod:`~policyc.report.svg` draws the two charts, :mod:`~policyc.report.render` writes
  HTML (jinja2, ``templates/report.html.j2``) and JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TextIO

from policyc.policy import load_policy
from policyc.report import gather, policyview, render, sections
from policyc.report.model import FAIL, Report

__all__ = ["DEFAULT_DAYS", "cmd_report", "make_report", "period"]

#: Without --from, the report covers this many days up to --to (or now).
DEFAULT_DAYS = 90
EXIT_OK = 0
EXIT_ERROR = 1


def period(start: dt.datetime | None, end: dt.datetime | None,
           now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The period [from, to): defaults to the 90 days up to now."""
    end = end or (now or dt.datetime.now(dt.UTC))
    start = start or end - dt.timedelta(days=DEFAULT_DAYS)
    return start, end


def make_report(dsn: str | None, start: dt.datetime, end: dt.datetime,
                policy_path: str | None, *, verify: bool = True) -> Report:
    policy = load_policy(Path(policy_path)) if policy_path else None
    data = gather.gather(dsn, start, end, groups=policyview.group_names(policy),
                         tables=policyview.table_names(policy), verify=verify)
    return sections.build(data, policy, policy_path)


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    start, end = period(args.start, args.end)
    if start >= end:
        print(f"policyc report: --from ({start.isoformat()}) is not before --to "
              f"({end.isoformat()})", file=sys.stderr)
        return 64
    report = make_report(args.dsn, start, end, args.policy, verify=not args.no_verify)
    Path(args.out).write_text(render.html(report))
    if args.json:
        Path(args.json).write_text(render.as_json(report))
    verdict = report.integrity
    written = args.out + (f" and {args.json}" if args.json else "")
    print(f"report written to {written}: {len(report.sections)} sections, "
          f"{start:%Y-%m-%d} to {end:%Y-%m-%d}; integrity: {verdict.text}", file=out)
    return EXIT_ERROR if verdict.verdict == FAIL else EXIT_OK
