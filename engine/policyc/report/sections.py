"""Each section's figures, tables, charts and verdicts, from the gathered data and the policy.

Sections map to the HIPAA Security and Privacy Rules (45 CFR Part 164) they are evidence for;
docs/report.md says what each shows and what it cannot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from policyc.policy.durations import parse_duration
from policyc.policy.model import Policy
from policyc.report import policyview, svg
from policyc.report.gather import Gathered
from policyc.report.model import (
    FAIL,
    INFO,
    NOT_CHECKED,
    OK,
    WARN,
    Finding,
    Report,
    Section,
    Table,
)
from policyc.report.policyview import _secs

DECISIONS = ("allowed", "masked", "approved", "held", "blocked", "denied", "expired", "error")
REFUSED = ("blocked", "denied", "expired")
SIX_YEARS = parse_duration("6y")
#: An agent's day is an anomaly when its PHI rows exceed this many times its median day ...
SPIKE_FACTOR = 3
#: ... and at least this many rows (a quiet agent's 2 -> 7 rows is not worth a look).
SPIKE_MIN_ROWS = 100
#: Refusals of one agent in one day worth a look.
REPEATED_REFUSALS = 3
#: An hour of the day is unusual for an agent when it holds less than this share of the
#: agent's statements (agents with at least UNUSUAL_HOUR_MIN statements).
UNUSUAL_HOUR_SHARE = 0.02
UNUSUAL_HOUR_MIN = 50


def _day(value: dt.date) -> str:
    return value.isoformat()


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "-" if value is None else str(value)


def _n(value: Any) -> int:
    return int(value or 0)


# --- 1. Summary -------------------------------------------------------------------------------
def policy_facts(policy: Policy | None, path: str | None) -> dict[str, Any] | None:
    if policy is None or path is None:
        return None
    raw = Path(path).read_bytes()
    return {"file": path, "sha256": hashlib.sha256(raw).hexdigest(),
            "groups": [g.name for g in policy.groups], "version": policy.version,
            "database": policy.database}


def integrity(data: Gathered) -> Finding:
    """The one verdict: audit.verify() over the period, sequence gaps, unsealed records."""
    check = data.verification
    gaps = data.rows.get("sequence_gaps", [])
    if check.ran and check.problems:
        first = check.problems[0]
        more = f" (and {len(check.problems) - 1} more)" if len(check.problems) > 1 else ""
        return Finding(FAIL, f"BROKEN: audit.verify() found {len(check.problems)} problem(s); "
                       f"the first: {first.text()}{more}")
    if gaps:
        g = gaps[0]
        return Finding(FAIL, f"INCOMPLETE: {len(gaps)} session(s) with missing or repeated "
                       f"statement records; the first: session {g['session_id']} (agent "
                       f"{g['agent'] or '-'}, {g['records']} record(s), end_seq "
                       f"{g['end_seq'] if g['end_seq'] is not None else '-'})")
    if not check.ran:
        return Finding(NOT_CHECKED, f"NOT VERIFIED: {check.not_checked}")
    seals = data.one("checkpoints")
    since = f" since {_when(check.since)}" if check.since else ""
    sealed = (f"; sealed up to checkpoint {seals['last_seal_id']} ({_when(seals['last_seal_at'])})"
              if seals.get("last_seal_id") else "; no seal yet")
    waiting = _n(seals.get("unsealed"))
    tail = f", {waiting} record(s) waiting for the next seal" if waiting else ""
    return Finding(OK, f"INTACT: audit.verify() found no problem in the chains recorded{since}"
                   f"{sealed}{tail}")


def summary(data: Gathered, policy_info: dict[str, Any] | None, verdict: Finding) -> Section:
    s = Section(1, "summary", "Summary", "the period at a glance")
    o = data.one("overview")
    decisions: dict[str, int] = defaultdict(int)
    for r in data.rows.get("statements_by_decision", []):
        decisions[r["decision"]] += _n(r["statements"])
    phi = sorted({r["column_name"] for r in data.rows.get("phi_columns_read", [])})
    s.figures.update({
        "period": {"from": data.period_from, "to": data.period_to},
        "database": o.get("database"), "server_version": o.get("server_version"),
        "read_replica": o.get("replica"), "read_at": o.get("read_at"), "role": data.role,
        "agents": _n(o.get("agents")), "sessions": _n(o.get("sessions")),
        "sessions_refused": _n(o.get("sessions_refused")),
        "sessions_open": _n(o.get("sessions_open")), "statements": _n(o.get("statements")),
        "statements_by_decision": {d: decisions.get(d, 0) for d in DECISIONS},
        "phi_statements": _n(o.get("phi_statements")), "phi_rows": _n(o.get("phi_rows")),
        "phi_columns_read": phi, "refusals": _n(o.get("refusals")), "holds": _n(o.get("holds")),
        "integrity": verdict.as_json(),
    })
    s.findings.append(verdict)
    rows = [
        ["period", f"{_when(data.period_from)} to {_when(data.period_to)} (end excluded)"],
        ["database", f"{o.get('database')} (PostgreSQL {o.get('server_version')}"
                     + (", a read replica" if o.get("replica") else "") + ")"],
        ["read as", f"{data.role} at {_when(o.get('read_at'))}, one read-only snapshot"],
        ["trail", f"statements recorded from {_when(o.get('first_statement_at'))} to "
                  f"{_when(o.get('last_statement_at'))} (all time)"],
        ["agents", f"{_n(o.get('agents'))}"],
        ["sessions", f"{_n(o.get('sessions'))} ({_n(o.get('sessions_refused'))} logins "
                     f"refused, {_n(o.get('sessions_open'))} still open)"],
        ["statements", f"{_n(o.get('statements')):,}: " + ", ".join(
            f"{d} {decisions[d]:,}" for d in DECISIONS if decisions.get(d))],
        ["PHI", f"{_n(o.get('phi_statements')):,} statements touched PHI, returning "
                f"{_n(o.get('phi_rows')):,} rows; {len(phi)} PHI column(s) read"],
        ["refusals / holds", f"{_n(o.get('refusals'))} refused, {_n(o.get('holds'))} held "
                             "for approval"],
    ]
    if policy_info:
        rows.append(["policy in force", f"{policy_info['file']}, sha256 "
                     f"{policy_info['sha256'][:16]}..., groups "
                     f"{', '.join(policy_info['groups'])}"])
    else:
        s.find(NOT_CHECKED, "policy not given (--policy): sections 4, 8 and 11 are not checked")
    hashes = data.rows.get("policy_hashes")
    if hashes is not None:
        s.tables.append(Table("Policies the proxy enforced in the period (by hash)",
                              ["policy hash", "sessions", "first", "last"],
                              [[h["policy_hash"], h["sessions"], _when(h["first_at"]),
                                _when(h["last_at"])] for h in hashes]))
        if policy_info and any(h["policy_hash"] and h["policy_hash"] != policy_info["sha256"]
                               for h in hashes):
            s.find(INFO, "sessions of the period ran under another policy hash than the file "
                   "given (the hashes may be computed differently: compare by hand)")
    else:
        s.cannot_show.append("Which policy each session ran under: needs runtime 0.7.0 "
                             "(audit.sessions.policy_hash).")
    s.cannot_show.append("The apply history: it is kept in policyc.applied_objects, which "
                         "only the owner reads (not policyc_auditor).")
    s.tables.insert(0, Table("At a glance", ["", ""], rows))
    s.queries += ["overview", "statements_by_decision", "phi_columns_read", "policy_hashes"]
    return s


# --- 2. Audit controls ----------------------------------------------------------------------
def audit_controls(data: Gathered) -> Section:
    s = Section(2, "audit-controls", "Audit controls", "45 CFR 164.312(b)")
    check = data.verification
    if check.ran:
        if check.problems:
            s.find(FAIL, f"audit.verify(): {len(check.problems)} problem(s); the first: "
                   f"{check.problems[0].text()}")
        else:
            s.find(OK, f"audit.verify() over the chains recorded since {_when(check.since)}: "
                   f"no problem ({check.seconds:.1f} s)")
    else:
        s.find(NOT_CHECKED, f"audit.verify(): {check.not_checked}")
    s.tables.append(Table("audit.verify() problems (the first 50)",
                          ["problem", "table", "record", "chain", "position", "at", "detail"],
                          [[p.problem, p.table, p.record, p.chain, p.seq, _when(p.at), p.detail]
                           for p in check.problems[:50]],
                          empty="none" if check.ran else "not run"))
    gaps = data.rows.get("sequence_gaps", [])
    s.tables.append(Table("Sessions with a gap or a repeat in their statement numbers (seq)",
                          ["session", "agent", "group", "started", "records", "positions",
                           "first seq", "last seq", "end_seq"],
                          [[g["session_id"], g["agent"], g["group_name"], _when(g["started_at"]),
                            g["records"], g["positions"], g["first_seq"], g["last_seq"],
                            g["end_seq"]] for g in gaps]))
    s.find(FAIL if gaps else OK, f"{len(gaps)} session(s) with missing or repeated records"
           if gaps else "every session's statements are numbered 1, 2, 3 ... up to its close")
    missing = data.rows.get("statements_without_outcome", [])
    total_missing = sum(_n(r["statements"]) for r in missing)
    s.tables.append(Table("Statements run without a recorded outcome, by group",
                          ["group", "statements", "first", "last", "example sessions"],
                          [[r["group_name"], r["statements"], _when(r["first_at"]),
                            _when(r["last_at"]), ", ".join(map(str, r["example_sessions"]))]
                           for r in missing]))
    if total_missing:
        s.find(WARN, f"{total_missing} statement(s) ran without an outcome recorded (no "
               "duration, no SQLSTATE): their session ended first")
    outages = data.rows.get("audit_outages", [])
    s.tables.append(Table("Sessions ended, or logins refused, because the audit trail could "
                          "not be written (58030)",
                          ["session", "agent", "group", "started", "ended", "reason", "proxy"],
                          [[r["session_id"], r["agent"], r["group_name"], _when(r["started_at"]),
                            _when(r["ended_at"]), r["reason"], r["proxy"]] for r in outages]))
    if outages:
        s.find(WARN, f"{len(outages)} session(s) ended or refused by an audit outage: nothing "
               "ran unrecorded, but agents were turned away")
    c = data.one("checkpoints")
    age = c.get("last_seal_age_s")
    median = c.get("median_gap_s")
    s.figures.update({
        "verify": {"ran": check.ran, "problems": len(check.problems),
                   "not_checked": check.not_checked, "seconds": round(check.seconds, 3)},
        "sessions_with_gaps": len(gaps), "statements_without_outcome": total_missing,
        "audit_outages": len(outages), "last_seal_id": c.get("last_seal_id"),
        "last_seal_at": c.get("last_seal_at"), "last_seal_age_s": age,
        "seals_in_period": _n(c.get("seals")), "median_seal_interval_s": median,
        "longest_seal_interval_s": c.get("longest_gap_s"), "unsealed": _n(c.get("unsealed")),
        "oldest_unsealed_at": c.get("oldest_unsealed_at"),
    })
    s.tables.append(Table("Seals (audit.checkpoints)", ["", ""], [
        ["last seal", f"checkpoint {c.get('last_seal_id')} at {_when(c.get('last_seal_at'))} "
                      f"({_secs(age)} before the report)" if c.get("last_seal_id") else "none"],
        ["seals in the period", f"{_n(c.get('seals'))}, sealing {_n(c.get('elements_sealed')):,}"
                                " records"],
        ["seal interval in force (observed)", f"median {_secs(median)}, longest "
                                              f"{_secs(c.get('longest_gap_s'))}"],
        ["waiting for the next seal", f"{_n(c.get('unsealed')):,} record(s), the oldest from "
                                      f"{_when(c.get('oldest_unsealed_at'))}"],
    ]))
    interval = float(median) if median else 60.0
    if _n(c.get("unsealed")) and age is not None and float(age) > max(3 * interval, 600):
        s.find(WARN, f"the last seal is {_secs(age)} old while records wait: is a proxy (or "
               "`policyc audit checkpoint`) sealing? Unsealed records at the end of a chain "
               "can be removed undetected")
    s.cannot_show.append("Signed checkpoint exports live outside the database; hold the trail "
                         "to them with `policyc audit verify --trusted EXPORT --public-key PUB`.")
    s.cannot_show.append("The proxy's --checkpoint-interval itself is not recorded; the "
                         "interval shown is the one observed between seals.")
    s.queries += ["sequence_gaps", "statements_without_outcome", "audit_outages", "checkpoints"]
    return s


# --- 3. Integrity ---------------------------------------------------------------------------
def integrity_section(data: Gathered) -> Section:
    s = Section(3, "integrity", "Integrity", "45 CFR 164.312(c)(1)")
    rows = data.rows.get("row_changes", [])
    s.tables.append(Table("Rows changed, per table, agent and operation",
                          ["table", "agent (or database user)", "operation", "rows",
                           "transactions"],
                          [[r["table_name"], r["agent"], r["operation"], r["rows"],
                            r["transactions"]] for r in rows]))
    direct = sorted({r["agent"] for r in rows if r["direct"]})
    s.figures["row_changes"] = sum(_n(r["rows"]) for r in rows)
    s.figures["changed_outside_proxy_by"] = direct
    if direct:
        s.find(INFO, f"rows changed outside the proxy by database user(s) {', '.join(direct)}")
    check = data.verification
    if not check.ran:
        s.find(NOT_CHECKED, f"row changes not verified: {check.not_checked}")
    else:
        broken = [p for p in check.problems if p.table == "row_changes"]
        s.figures["row_change_problems"] = len(broken)
        if broken:
            s.find(FAIL, f"{len(broken)} row-change record(s) fail verification; the first: "
                   f"{broken[0].text()}")
        else:
            s.find(OK, f"every row-change record since {_when(check.since)} matches its hash "
                   "and its seal")
    s.cannot_show.append("Changes made with the audit triggers disabled (a superuser's "
                         "session_replication_role = replica) leave no row change; the tables' "
                         "own history is outside the trail.")
    s.queries.append("row_changes")
    return s


# --- 4. Access control ----------------------------------------------------------------------
def access_section(data: Gathered, policy: Policy | None) -> Section:
    s = Section(4, "access-control", "Access control", "45 CFR 164.312(a)(1)")
    policyview.access_control(s, policy, data)
    if policy is None:
        policyview._identification(s, data)
        policyview._break_glass(s, data)
    s.queries += ["catalog_grants", "identification", "session_lifetimes", "approvals"]
    return s


# --- 5. Authentication ----------------------------------------------------------------------
def authentication(data: Gathered) -> Section:
    s = Section(5, "authentication", "Person or entity authentication", "45 CFR 164.312(d)")
    rows = data.rows.get("logins", [])
    by_reason: dict[tuple[str, str], int] = defaultdict(int)
    by_issuer: dict[str, int] = defaultdict(int)
    days: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        by_reason[(r["outcome"], r["reason"])] += _n(r["logins"])
        if r["outcome"] == "accepted":
            by_issuer[r["issuer"] or "(no iss claim)"] += _n(r["logins"])
        days[_day(r["day"])][r["outcome"]] += _n(r["logins"])
    s.tables.append(Table("Logins by outcome and reason", ["outcome", "reason", "logins"],
                          [[o, reason or "-", n] for (o, reason), n in sorted(by_reason.items())]))
    s.tables.append(Table("Accepted logins by token issuer", ["issuer", "logins"],
                          sorted(map(list, by_issuer.items()))))
    ordered = sorted(days)
    if ordered:
        s.charts.append(svg.stacked_bars(
            ordered, {k: [days[d].get(k, 0) for d in ordered] for k in ("accepted", "refused")},
            title="Logins per day (UTC), accepted and refused"))
    s.tables.append(Table("Logins per day", ["day", "accepted", "refused"],
                          [[d, days[d].get("accepted", 0), days[d].get("refused", 0)]
                           for d in ordered]))
    refused = sum(n for (o, _), n in by_reason.items() if o == "refused")
    accepted = sum(n for (o, _), n in by_reason.items() if o == "accepted")
    s.figures.update({"accepted": accepted, "refused": refused,
                      "refused_by_reason": {reason: n for (o, reason), n in by_reason.items()
                                            if o == "refused"},
                      "accepted_by_issuer": dict(by_issuer)})
    s.find(INFO, f"{accepted} login(s) accepted, {refused} refused")
    s.cannot_show.append("The issuer of a refused token: a token that fails verification is "
                         "not trusted, so its claims are not recorded.")
    s.queries.append("logins")
    return s


# --- 6. Transmission security ---------------------------------------------------------------
def transmission(data: Gathered) -> Section:
    s = Section(6, "transmission", "Transmission security", "45 CFR 164.312(e)(1)")
    rows = data.rows.get("tls", [])
    summary_rows = [r for r in rows if r["row_kind"] == "summary"]
    plain = [r for r in rows if r["row_kind"] == "plaintext"]
    total = sum(_n(r["sessions"]) - _n(r["refused"]) for r in summary_rows)
    over_tls = sum(_n(r["sessions"]) - _n(r["refused"]) for r in summary_rows if r["tls"])
    share = over_tls / total if total else 1.0
    s.figures.update({"sessions": total, "over_tls": over_tls, "share_tls": round(share, 4),
                      "versions": {r["version"]: _n(r["sessions"]) for r in summary_rows},
                      "plaintext_sessions": len(plain)})
    s.tables.append(Table("Sessions by transport (agent to proxy)",
                          ["TLS version", "sessions", "of which refused"],
                          [[r["version"], r["sessions"], r["refused"]] for r in summary_rows]))
    s.tables.append(Table("Accepted sessions without TLS (the first 100)",
                          ["session", "agent", "client address", "started"],
                          [[r["session_id"], r["agent"], r["client_addr"],
                            _when(r["started_at"])] for r in plain]))
    if plain:
        s.find(WARN, f"{len(plain)} accepted session(s) without TLS ({share:.1%} over TLS): "
               "plaintext is allowed only from loopback with --allow-plaintext-loopback")
    else:
        s.find(OK, f"every accepted session used TLS ({total} session(s))")
    s.cannot_show.append("The proxy-to-database leg: it is the upstream DSN's sslmode, not "
                         "recorded per session.")
    s.queries.append("tls")
    return s


# --- 7. Information system activity review -------------------------------------------------
def activity(data: Gathered) -> Section:
    s = Section(7, "activity-review", "Information system activity review",
                "45 CFR 164.308(a)(1)(ii)(D)")
    days: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in data.rows.get("daily_decisions", []):
        days[_day(r["day"])][r["decision"]] += _n(r["statements"])
    ordered = sorted(days)
    present = [d for d in DECISIONS if any(days[x].get(d) for x in ordered)]
    if ordered:
        s.charts.append(svg.stacked_bars(
            ordered, {d: [days[x].get(d, 0) for x in ordered] for d in present},
            title="Statements per day (UTC) by decision"))
    s.tables.append(Table("Statements per day by decision", ["day", *present],
                          [[x, *[days[x].get(d, 0) for d in present]] for x in ordered]))
    phi = data.rows.get("phi_columns_read", [])
    groups = sorted({r["group_name"] or "-" for r in phi})
    columns = sorted({r["column_name"] for r in phi})
    cells = {(r["group_name"] or "-", r["column_name"]): _n(r["rows"]) for r in phi}
    if phi:
        s.charts.append(svg.heat_map(groups, columns, cells,
                                     title="PHI rows returned by group and column"))
    s.tables.append(Table("PHI reads by group and column", ["group", "column", "statements",
                                                            "rows"],
                          [[r["group_name"], r["column_name"], r["statements"], r["rows"]]
                           for r in phi]))
    hourly = data.rows.get("agents_phi", [])
    per_agent: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    agent_days: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    agent_hours: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    refusals: dict[tuple[str, str], int] = defaultdict(int)
    for r in hourly:
        agent = r["agent"] or "-"
        for k in ("statements", "phi_statements", "phi_rows", "refusals"):
            per_agent[agent][k] += _n(r[k])
        agent_days[agent][_day(r["day"])] += _n(r["phi_rows"])
        agent_hours[agent][r["hour"]][0] += _n(r["statements"])
        agent_hours[agent][r["hour"]][1] += _n(r["phi_statements"])
        refusals[(agent, _day(r["day"]))] += _n(r["refusals"])
    top = sorted(per_agent.items(), key=lambda kv: (-kv[1]["phi_rows"], kv[0]))[:10]
    s.tables.append(Table("Top agents by PHI rows returned", ["agent", "PHI rows",
                                                             "PHI statements", "statements",
                                                             "refusals"],
                          [[a, v["phi_rows"], v["phi_statements"], v["statements"],
                            v["refusals"]] for a, v in top]))
    anomalies: list[list[Any]] = []
    for agent, by_day in sorted(agent_days.items()):
        active = [v for v in by_day.values() if v]
        if len(active) < 3:
            continue
        usual = statistics.median(active)
        for day, rows in sorted(by_day.items()):
            if rows >= SPIKE_MIN_ROWS and rows > SPIKE_FACTOR * usual:
                anomalies.append(["PHI reads far above usual", agent, day,
                                  f"{rows:,} PHI rows; its median day {usual:,.0f}"])
    for r in data.rows.get("first_seen", []):
        anomalies.append(["first-seen agent", r["agent"], _when(r["first_seen_at"]),
                          f"group {r['group_name'] or '-'} from {r['client_addr'] or '-'} "
                          f"({r['outcome']})"])
    for agent, hours in sorted(agent_hours.items()):
        total = sum(v[0] for v in hours.values())
        if total < UNUSUAL_HOUR_MIN:
            continue
        for hour, (count, phi_count) in sorted(hours.items()):
            if phi_count and count < UNUSUAL_HOUR_SHARE * total:
                anomalies.append(["unusual hour", agent, f"{hour:02d}:00-{hour:02d}:59 UTC",
                                  f"{phi_count} PHI statement(s); {count} of its {total} "
                                  "statements fall in this hour"])
    for (agent, day), count in sorted(refusals.items()):
        if count >= REPEATED_REFUSALS:
            anomalies.append(["repeated refusals", agent, day, f"{count} statements refused"])
    s.tables.append(Table("Anomalies worth a human look", ["kind", "agent", "when", "what"],
                          anomalies))
    s.figures.update({
        "statements_per_day": {x: dict(days[x]) for x in ordered},
        "phi_by_group_column": [{"group": g, "column": c, "rows": v}
                                for (g, c), v in sorted(cells.items())],
        "top_agents_by_phi_rows": [{"agent": a, **v} for a, v in top],
        "anomalies": [dict(zip(["kind", "agent", "when", "what"], a, strict=True))
                      for a in anomalies],
    })
    s.find(WARN if anomalies else OK, f"{len(anomalies)} anomaly(ies) worth a look"
           if anomalies else "no anomaly by the rules below")
    s.cannot_show.append(
        f"Anomaly rules: a day with at least {SPIKE_MIN_ROWS} PHI rows and over {SPIKE_FACTOR}x "
        "the agent's median active day (agents active on 3 days or more); an agent's first "
        "session in the whole trail; PHI statements in an hour holding under "
        f"{UNUSUAL_HOUR_SHARE:.0%} of the agent's statements (agents with {UNUSUAL_HOUR_MIN} or "
        f"more); {REPEATED_REFUSALS} or more refusals in a day. Hours and days are UTC.")
    s.queries += ["daily_decisions", "phi_columns_read", "agents_phi", "first_seen"]
    return s


# --- 8. Minimum necessary -------------------------------------------------------------------
def minimum_necessary(data: Gathered, policy: Policy | None) -> Section:
    s = Section(8, "minimum-necessary", "Minimum necessary", "45 CFR 164.502(b)")
    policyview.minimum_necessary(s, policy, data)
    s.queries += ["tables_used", "phi_columns_read", "catalog_grants"]
    return s


# --- 9. Approvals ---------------------------------------------------------------------------
def approvals(data: Gathered) -> Section:
    s = Section(9, "approvals", "Approvals", "45 CFR 164.312(a)(2)(ii), 164.308(a)(4)")
    t = data.one("approval_timing")
    rows = data.rows.get("approvals", [])
    by_approver: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["status"] in ("approved", "denied"):
            by_approver[r["decided_by"] or "-"][r["status"]] += _n(r["requests"])
    s.tables.append(Table("Requests", ["", ""], [
        ["requests", _n(t.get("requests"))], ["approved", _n(t.get("approved"))],
        ["denied", _n(t.get("denied"))], ["expired without a decision", _n(t.get("expired"))],
        ["cancelled by the client", _n(t.get("cancelled"))],
        ["still pending", _n(t.get("pending"))],
        ["time to decision", f"median {_secs(t.get('median_decision_s'))}, 95th percentile "
                             f"{_secs(t.get('p95_decision_s'))}, longest "
                             f"{_secs(t.get('longest_decision_s'))}"],
        ["statements run under an approval", _n(t.get("statements_run_under_approval"))],
    ]))
    s.tables.append(Table("Decisions by approver", ["approver", "approved", "denied"],
                          [[a, v.get("approved", 0), v.get("denied", 0)]
                           for a, v in sorted(by_approver.items())]))
    s.tables.append(Table("Requests by group, reason and outcome",
                          ["group", "held because", "outcome", "decided by", "requests",
                           "median decision"],
                          [[r["group_name"], r["hold_reason"], r["status"], r["decided_by"] or "-",
                            r["requests"], _secs(r["median_decision_s"])] for r in rows]))
    s.figures.update({k: (float(v) if v is not None and k.endswith("_s") else _n(v))
                      for k, v in t.items()})
    s.figures["by_approver"] = {a: dict(v) for a, v in by_approver.items()}
    if _n(t.get("expired")):
        s.find(WARN, f"{_n(t.get('expired'))} request(s) expired without a decision")
    s.find(INFO, f"{_n(t.get('requests'))} request(s) in the period")
    s.cannot_show.append("Refused self-approvals: audit.approve() refuses a requester deciding "
                         "its own request with an error and records nothing.")
    s.queries += ["approvals", "approval_timing"]
    return s


# --- 10. Retention --------------------------------------------------------------------------
def retention(data: Gathered, policy: Policy | None) -> Section:
    s = Section(10, "retention", "Retention", "45 CFR 164.316(b)(2)")
    prunes = data.rows.get("prunes", [])
    if policy is not None:
        seconds = policy.audit.retention_seconds
        source = f"the policy's audit.retention ({policyview.where(policy, 'audit.retention')})"
    elif prunes:
        seconds = None
        source = f"the last prune's retention ({prunes[-1]['retention']})"
    else:
        seconds = SIX_YEARS
        source = "the default (6y): give --policy for the retention in force"
    if seconds is not None and seconds < SIX_YEARS:
        s.find(WARN, f"retention {_secs(seconds)} is below six years (164.316(b)(2)(i))")
    elif seconds is not None:
        s.find(OK, f"retention {_secs(seconds)} ({seconds // 86400} days), from {source}; "
               "six years are required")
    else:
        s.find(INFO, f"retention from {source}")
    oldest = {r["table_name"]: r["oldest"] for r in data.rows.get("oldest_records", [])}
    parts = data.rows.get("partitions", [])
    monthly = [p for p in parts if not p["is_default"]]
    by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in monthly:
        by_table[p["table_name"]].append(p)
    s.tables.append(Table("Oldest record of each audit table", ["table", "oldest record"],
                          [[k, _when(v)] for k, v in oldest.items()]))
    s.tables.append(Table("Monthly partitions", ["table", "partitions", "first month",
                                                 "last month", "rows (estimated)"],
                          [[t, len(ps), _when(ps[0]["range_from"]), _when(ps[-1]["range_from"]),
                            sum(_n(p["estimated_rows"]) for p in ps)]
                           for t, ps in sorted(by_table.items())]))
    s.tables.append(Table("Prune history (audit.prunes)",
                          ["at", "retention", "cut-off", "partition", "rows"],
                          [[_when(p["at"]), p["retention"], _when(p["cutoff"]),
                            p["partition_name"], p["rows"]] for p in prunes]))
    next_prune = None
    if seconds is not None and monthly:
        first_end = min(p["range_to"] for p in monthly)
        next_prune = first_end + dt.timedelta(seconds=seconds)
        s.find(INFO, f"next prune: the oldest month ends {_when(first_end)}, so "
               f"`policyc audit prune` would first drop it on or after {_when(next_prune)}")
    s.figures.update({"retention_seconds": seconds, "retention_source": source,
                      "oldest": oldest, "partitions": {t: len(ps) for t, ps in by_table.items()},
                      "prunes": len({p["checkpoint_id"] for p in prunes}),
                      "next_prune_at": next_prune})
    s.cannot_show.append("Copies of the trail outside this database (backups, exports) and "
                         "their retention.")
    s.queries += ["partitions", "oldest_records", "prunes"]
    return s


# --- 11. De-identification ------------------------------------------------------------------
def deidentification(data: Gathered, policy: Policy | None) -> Section:
    s = Section(11, "de-identification", "De-identification", "45 CFR 164.514(b)(2)")
    policyview.deidentification(s, policy, data)
    s.queries.append("catalog_grants")
    return s


def build(data: Gathered, policy: Policy | None, policy_path: str | None) -> Report:
    info = policy_facts(policy, policy_path)
    verdict = integrity(data)
    sections = [
        summary(data, info, verdict), audit_controls(data), integrity_section(data),
        access_section(data, policy), authentication(data), transmission(data),
        activity(data), minimum_necessary(data, policy), approvals(data),
        retention(data, policy), deidentification(data, policy),
    ]
    for section in sections:
        section.queries = [q for q in dict.fromkeys(section.queries) if q in data.queries]
        for name in section.queries:
            needs = data.queries[name].requires or ""
            if name in data.unavailable and not any(needs in c for c in section.cannot_show):
                section.cannot_show.append(f"query {name}: {data.unavailable[name]}")
    queries = {name: {"file": q.relative, "answers": q.answers, "sql": q.text,
                      "seconds": round(data.timings.get(name, 0.0), 4)}
               for name, q in data.queries.items()}
    return Report(dt.datetime.now(dt.UTC), data.period_from, data.period_to, data.database,
                  data.role, verdict, sections, queries, info, data.timings)


__all__ = ["OK", "build"]
