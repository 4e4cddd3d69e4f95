"""The sections that read the policy: access control (4), minimum necessary (8) and
de-identification (11). Each works from the loaded policy (with its file:line per key), the
live catalog as the auditor can see it, and what the period's statements used."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from policyc.policy.model import AllColumns, Columns, Group, Mask, Policy, TableName
from policyc.report.gather import Gathered
from policyc.report.model import FAIL, INFO, NOT_CHECKED, OK, WARN, Section, Table

NEEDS_POLICY = "not checked: needs --policy (the policy file in force)"


def where(policy: Policy, key: str) -> str:
    loc = policy.where(key)
    return f"{loc.file}:{loc.line}"


def policy_tables(policy: Policy) -> list[TableName]:
    found = set(policy.phi)
    for group in policy.groups:
        found |= set(group.tables())
    return sorted(found)


def live_columns(data: Gathered) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for row in data.rows.get("catalog_grants", []):
        if row["object"] == "column":
            out[row["relation"]].append(row["column_name"])
    return dict(out)


def _resolve(columns: Columns, table: TableName, live: dict[str, list[str]]) -> list[str] | None:
    if isinstance(columns, AllColumns):
        return live.get(str(table))
    return list(columns)


def _show(columns: Columns) -> str:
    if isinstance(columns, AllColumns):
        return '"*" (every column)'
    return ", ".join(columns) or "-"


# --- 4. Access control ------------------------------------------------------------------------
def access_control(section: Section, policy: Policy | None, data: Gathered) -> None:
    if policy is None:
        section.find(NOT_CHECKED, "per-group access " + NEEDS_POLICY)
        return
    live = live_columns(data)
    tables = policy_tables(policy)
    grants: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for group in policy.groups:
        unmasked = {(ref.table, ref.column) for ref in group.unmask}
        clear: list[str] = []
        masked: list[str] = []
        hidden: list[str] = []
        for table in tables:
            phi = policy.phi.get(table, {})
            if table not in group.read:
                if table not in group.write:
                    hidden.append(f"{table} (no access)")
                continue
            cols = _resolve(group.read[table], table, live)
            if cols is None:
                clear.append(f"{table}.* (columns not listed: the table is not in the catalog)")
                continue
            for col in cols:
                ref = f"{table}.{col}"
                if col in phi and (table, col) not in unmasked:
                    masked.append(f"{ref} ({phi[col].value})")
                else:
                    clear.append(ref + (" (PHI)" if col in phi else ""))
            for col in sorted(set(phi) - set(cols)):
                hidden.append(f"{table}.{col}")
        filters = [f"{t}: {expr}" for t, expr in sorted(group.rows.items())]
        writes = [f"{t}: insert {_show(w.insert)}; update {_show(w.update)}; "
                  f"delete {'yes' if w.delete else 'no'}" for t, w in sorted(group.write.items())]
        grants.append([group.name, "; ".join(clear) or "-", "; ".join(masked) or "-",
                       "; ".join(hidden) or "-", "; ".join(filters) or "-",
                       "; ".join(writes) or "-", where(policy, f"groups.{group.name}")])
        summary[group.name] = {"clear": clear, "masked": masked, "not_at_all": hidden,
                               "row_filters": dict((str(t), e) for t, e in group.rows.items()),
                               "writes": writes}
    section.figures["groups"] = summary
    section.tables.append(Table(
        "What each group reads in clear, masked and not at all (from the policy)",
        ["group", "in clear", "masked (mask)", "not at all", "row filters", "writes",
         "policy"], grants))
    _drift(section, policy, data, live)
    _identification(section, data)
    _logoff(section, policy, data)
    _break_glass(section, data)


def _drift(section: Section, policy: Policy, data: Gathered,
           live: dict[str, list[str]]) -> None:
    if "catalog_grants" not in data.rows:
        section.find(NOT_CHECKED, "drift against the live catalog not checked: "
                     + data.unavailable.get("catalog_grants", "the catalog query did not run"))
        return
    catalog = data.rows["catalog_grants"]
    roles = {r["group_name"] for r in catalog if r["object"] == "role"}
    views: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in catalog:
        if r["object"] == "view":
            views[(r["group_name"], r["relation"])][r["column_name"]] = r
    drift: list[list[Any]] = []
    for group in policy.groups:
        base = f"groups.{group.name}"
        if group.name not in roles:
            drift.append([group.name, "-", "the group role does not exist", where(policy, base)])
            continue
        expected_views = {t.name for t in group.tables()}
        for table in group.tables():
            got = views.get((group.name, table.name))
            if got is None:
                drift.append([group.name, f"{group.name}.{table.name}", "view missing",
                              where(policy, base)])
                continue
            drift += _column_drift(policy, group, table, got, live)
        for (name, view), _cols in sorted(views.items()):
            if name == group.name and view not in expected_views:
                drift.append([group.name, f"{group.name}.{view}",
                              "a view the policy does not name", where(policy, base)])
        for r in catalog:
            if r["object"] == "base" and r["group_name"] == group.name and any(
                    r[k] for k in ("can_select", "can_insert", "can_update", "can_delete")):
                what = [k.removeprefix("can_").upper() for k in
                        ("can_select", "can_insert", "can_update", "can_delete") if r[k]]
                drift.append([group.name, r["relation"],
                              f"the group role has {', '.join(what)} on the base table itself",
                              where(policy, base)])
    section.figures["drift"] = [{"group": d[0], "object": d[1], "drift": d[2], "policy": d[3]}
                                for d in drift]
    section.tables.append(Table("Drift: the live catalog against the policy", [
        "group", "object", "drift", "policy"], drift,
        empty="none: every group's views and column grants match the policy"))
    if drift:
        section.find(FAIL, f"{len(drift)} difference(s) between the live grants and the policy "
                     "(run `policyc plan` to see and repair them)")
    else:
        section.find(OK, "the live catalog matches the policy: views, column grants, no "
                     "direct access to base tables")


def _column_drift(policy: Policy, group: Group, table: TableName,
                  got: dict[str, dict[str, Any]], live: dict[str, list[str]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    grant = group.write.get(table)
    wanted = {
        "can_select": _resolve(group.read.get(table, ()), table, live),
        "can_insert": _resolve(grant.insert, table, live) if grant else [],
        "can_update": _resolve(grant.update, table, live) if grant else [],
    }
    for key, cols in wanted.items():
        if cols is None:
            continue
        actual = {c for c, r in got.items() if r[key]}
        verb = key.removeprefix("can_").upper()
        section = "read" if key == "can_select" else f"write.{table}.{verb.lower()}"
        path = (f"groups.{group.name}.read.{table}" if key == "can_select"
                else f"groups.{group.name}.{section}")
        for col in sorted(actual - set(cols)):
            out.append([group.name, f"{group.name}.{table.name}.{col}",
                        f"{verb} granted, the policy does not list it", where(policy, path)])
        for col in sorted(set(cols) - actual):
            out.append([group.name, f"{group.name}.{table.name}.{col}",
                        f"{verb} in the policy, not granted", where(policy, path)])
    deletes = any(r["can_delete"] for r in got.values())
    if deletes != bool(grant and grant.delete):
        out.append([group.name, f"{group.name}.{table.name}",
                    "DELETE granted, the policy does not allow it" if deletes
                    else "DELETE in the policy, not granted",
                    where(policy, f"groups.{group.name}.write.{table}")])
    filtered = any(r["filtered"] for r in got.values())
    if table in group.rows and not filtered:
        out.append([group.name, f"{group.name}.{table.name}",
                    "the policy filters rows, the view has no WHERE clause",
                    where(policy, f"groups.{group.name}.rows.{table}")])
    return out


def _identification(section: Section, data: Gathered) -> None:
    rows = data.rows.get("identification", [])
    anonymous = sum(r["sessions"] for r in rows if r["agent"] is None)
    named = [r for r in rows if r["agent"] is not None]
    section.figures["sessions_without_agent"] = anonymous
    if anonymous:
        section.find(FAIL, f"{anonymous} accepted session(s) without an agent name")
    else:
        section.find(OK, "unique identification: every accepted session names its agent "
                     f"({len(named)} agent(s))")
    addresses = sorted(r["addresses"] for r in named)
    usual = addresses[len(addresses) // 2] if addresses else 0
    threshold = max(3, 3 * usual)
    many = [r for r in named if r["addresses"] > threshold]
    section.figures["agents_from_many_addresses"] = [
        {"agent": r["agent"], "addresses": r["addresses"], "sessions": r["sessions"]}
        for r in many]
    section.tables.append(Table(
        f"Agents seen from unusually many client addresses (more than {threshold}: three "
        "times the median agent's, at least 3)",
        ["agent", "addresses", "sessions", "groups"],
        [[r["agent"], r["addresses"], r["sessions"], ", ".join(r["group_names"] or [])]
         for r in many]))
    if many:
        section.find(WARN, f"{len(many)} agent(s) seen from more than {threshold} addresses: "
                     "one name shared by several machines?")


def _logoff(section: Section, policy: Policy, data: Gathered) -> None:
    rows = {r["group_name"]: r for r in data.rows.get("session_lifetimes", [])}
    table: list[list[Any]] = []
    no_idle = []
    for group in policy.groups:
        r = rows.get(group.name, {})
        limits = group.limits
        if limits.idle_in_transaction_session_timeout is None:
            no_idle.append(group.name)
        table.append([group.name, r.get("sessions", 0), _secs(r.get("median_token_s")),
                      _secs(r.get("longest_token_s")), _secs(r.get("longest_session_s")),
                      r.get("ended_by_expiry", 0),
                      _secs(limits.idle_in_transaction_session_timeout),
                      _secs(limits.statement_timeout)])
    section.tables.append(Table(
        "Automatic logoff: token lifetimes (exp - iat), session lengths, and the policy's "
        "idle limits", ["group", "sessions", "median token", "longest token",
                        "longest session", "ended at token expiry",
                        "idle in transaction limit", "statement limit"], table))
    section.figures["logoff"] = {
        group.name: {
            "sessions": _int(rows.get(group.name, {}).get("sessions")),
            "median_token_s": _float(rows.get(group.name, {}).get("median_token_s")),
            "longest_token_s": _float(rows.get(group.name, {}).get("longest_token_s")),
            "longest_session_s": _float(rows.get(group.name, {}).get("longest_session_s")),
            "ended_by_expiry": _int(rows.get(group.name, {}).get("ended_by_expiry")),
            "idle_in_transaction_limit_s": group.limits.idle_in_transaction_session_timeout,
            "statement_limit_s": group.limits.statement_timeout,
        } for group in policy.groups}
    section.find(INFO, "a session ends when its token expires; the token lifetime is the "
                 "automatic logoff")
    if no_idle:
        section.find(WARN, "no idle_in_transaction_session_timeout for group(s) "
                     f"{', '.join(no_idle)}: a session idle inside a transaction stays open "
                     "until its token expires (limits: in the policy)")


def _break_glass(section: Section, data: Gathered) -> None:
    rows = [r for r in data.rows.get("approvals", []) if r["status"] == "approved"]
    section.tables.append(Table(
        "Emergency access: statements run only after an approval (break-glass)",
        ["group", "held because", "approved by", "requests", "agents"],
        [[r["group_name"], r["hold_reason"], r["decided_by"], r["requests"], r["agents"]]
         for r in rows]))
    section.figures["break_glass"] = sum(r["requests"] for r in rows)


def _int(value: Any) -> int:
    return int(value or 0)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _secs(value: Any) -> str:
    if value is None:
        return "-"
    s = float(value)
    for unit, size in (("y", 365.25 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{s:.0f} s"


# --- 8. Minimum necessary ---------------------------------------------------------------------
def minimum_necessary(section: Section, policy: Policy | None, data: Gathered) -> None:
    if policy is None:
        section.find(NOT_CHECKED, "granted against used " + NEEDS_POLICY)
        return
    live = live_columns(data)
    used_tables: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in data.rows.get("tables_used", []):
        used_tables[r["group_name"]][r["table_name"]] = r
    used_phi: dict[str, set[str]] = defaultdict(set)
    for r in data.rows.get("phi_columns_read", []):
        used_phi[r["group_name"]].add(r["column_name"])
    unused: list[list[Any]] = []
    per_group: list[list[Any]] = []
    for group in policy.groups:
        base = f"groups.{group.name}"
        tables_used = used_tables.get(group.name, {})
        granted = group.tables()
        for table in granted:
            if str(table) not in tables_used:
                kind = "read" if table in group.read else "write"
                unused.append([group.name, str(table), f"table ({kind})", "never named",
                               where(policy, f"{base}.{kind}.{table}")])
                continue
            grant = group.write.get(table)
            if grant and not tables_used[str(table)]["writes"]:
                unused.append([group.name, str(table), "write grant", "never written",
                               where(policy, f"{base}.write.{table}")])
        phi_granted = list(_phi_read(policy, group, live))
        unmasked_refs = {str(u) for u in group.unmask}
        for ref, explicit in phi_granted:
            if ref in used_phi.get(group.name, set()) or ref in unmasked_refs:
                continue  # read; or unmasked, listed below with its own line
            table_text = ref.rsplit(".", 1)[0]
            if table_text not in tables_used:
                continue  # already listed as an unused table
            key = (f"{base}.read.{table_text}.{ref.rsplit('.', 1)[1]}" if explicit
                   else f"{base}.read.{table_text}")
            unused.append([group.name, ref, "PHI column", "never read", where(policy, key)])
        for unmasked in group.unmask:
            if str(unmasked) not in used_phi.get(group.name, set()):
                unused.append([group.name, str(unmasked), "unmask", "never read in clear",
                               where(policy, f"{base}.unmask.{unmasked}")])
        per_group.append([group.name, len(granted), len(tables_used), len(phi_granted),
                          len(used_phi.get(group.name, set()) & {r for r, _ in phi_granted})])
    section.tables.append(Table("Granted against used, per group", [
        "group", "tables granted", "tables used", "PHI columns granted", "PHI columns read"],
        per_group))
    section.tables.append(Table(
        "Grants unused in the period: candidates to remove (policy file:line)",
        ["group", "grant", "kind", "in the period", "policy"], unused,
        empty="none: every grant was used"))
    section.figures["unused"] = [dict(zip(["group", "grant", "kind", "usage", "policy"], u,
                                          strict=True)) for u in unused]
    if unused:
        section.find(WARN, f"{len(unused)} grant(s) unused in the period: candidates to remove")
    else:
        section.find(OK, "every table, write and PHI column granted was used in the period")
    section.cannot_show.append(
        "Columns that are not PHI: statements record the tables and PHI columns they touch, "
        "not every column, so an unused non-PHI column grant is not listed.")


def _phi_read(policy: Policy, group: Group, live: dict[str, list[str]]
              ) -> Iterable[tuple[str, bool]]:
    """The PHI columns a group reads (masked or clear), and whether listed by name."""
    for table, columns in sorted(group.read.items()):
        phi = policy.phi.get(table, {})
        explicit = not isinstance(columns, AllColumns)
        cols = _resolve(columns, table, live) or list(phi)
        for col in cols:
            if col in phi:
                yield f"{table}.{col}", explicit


# --- 11. De-identification ----------------------------------------------------------------
#: HIPAA Safe Harbor's 18 identifiers (45 CFR 164.514(b)(2)(i)), matched to column names by a
#: heuristic: a column that matches none is listed as "review by hand".
SAFE_HARBOR: list[tuple[str, str]] = [
    ("A names", r"name|initials"),
    ("B geographic subdivisions smaller than a state", r"zip|postal|address|street|city|"
     r"county|geo|lat|lon"),
    ("C dates (except year) related to the individual; ages over 89",
     r"birth|dob|date|_at$|admit|discharge|death|age"),
    ("D telephone numbers", r"phone|mobile|tel"),
    ("E fax numbers", r"fax"),
    ("F e-mail addresses", r"mail"),
    ("G social security numbers", r"ssn|social"),
    ("H medical record numbers", r"mrn|record_n|chart"),
    ("I health plan beneficiary numbers", r"beneficiary|member_id|insur|plan_id"),
    ("J account numbers", r"account|acct|iban"),
    ("K certificate/license numbers", r"licen|certif"),
    ("L vehicle identifiers", r"vin|vehicle|plate"),
    ("M device identifiers and serial numbers", r"device|serial|imei"),
    ("N web URLs", r"url|website"),
    ("O IP addresses", r"\bip\b|ip_addr|inet"),
    ("P biometric identifiers", r"biometric|finger|retina|voice"),
    ("Q full-face photographs", r"photo|image|face"),
    ("R any other unique identifying number or code", r"_id$|number|code"),
]

#: What each mask does to an identifier, in Safe Harbor's terms.
MASK_EFFECT = {
    Mask.REDACT: "removed", Mask.NULL: "removed",
    Mask.YEAR: "generalised to the year (allowed)", Mask.MONTH: "month kept (not allowed)",
    Mask.ZIP3: "first 3 digits, 000 where sparse (allowed)",
    Mask.AGE90: "ages over 89 grouped (allowed)",
    Mask.HASH: "pseudonym derived from the value (not Safe Harbor's code, 164.514(c))",
    Mask.PARTIAL: "partly kept (not removed)",
}


def identifier_of(column: str) -> str:
    for label, pattern in SAFE_HARBOR:
        if re.search(pattern, column, re.IGNORECASE):
            return label
    return "not matched: free text or other (review by hand)"


def deidentification(section: Section, policy: Policy | None, data: Gathered) -> None:
    if policy is None:
        section.find(NOT_CHECKED, "the PHI columns' masks " + NEEDS_POLICY)
        return
    live = live_columns(data)
    groups = [g.name for g in policy.groups]
    rows: list[list[Any]] = []
    clear: dict[str, list[str]] = defaultdict(list)
    for table, masks in sorted(policy.phi.items()):
        for column, mask in sorted(masks.items()):
            ref = f"{table}.{column}"
            seen = []
            for group in policy.groups:
                cols = _resolve(group.read.get(table, ()), table, live) or []
                if column not in cols:
                    seen.append("-")
                elif any(u.table == table and u.column == column for u in group.unmask):
                    seen.append("CLEAR")
                    clear[group.name].append(ref)
                else:
                    seen.append(mask.value)
            rows.append([ref, identifier_of(column), f"{mask.value}: {MASK_EFFECT[mask]}",
                         *seen, where(policy, f"phi.{table}.{column}")])
    section.tables.append(Table(
        "PHI columns against the Safe Harbor identifiers: what each group sees (- none, "
        "CLEAR in clear, else the mask)",
        ["column", "identifier (by name)", "default mask", *groups, "policy"], rows))
    section.figures["clear"] = dict(clear)
    section.figures["columns"] = [
        {"column": r[0], "identifier": r[1], "mask": r[2],
         "groups": dict(zip(groups, r[3:-1], strict=True))} for r in rows]
    for name, refs in sorted(clear.items()):
        section.find(WARN, f"group {name} sees {len(refs)} identifier(s) in clear: "
                     f"{', '.join(refs)} (its data is not de-identified)")
    weak = [r[0] for r in rows if any(w in r[2] for w in ("not Safe Harbor", "not allowed",
                                                           "not removed"))]
    if weak:
        section.find(INFO, "masks that are not Safe Harbor removal (pseudonyms, partial, "
                     f"month): {', '.join(weak)}")
    if not clear:
        section.find(OK, "no group sees a PHI column in clear")
    section.cannot_show.append(
        "Whether a column is an identifier is matched by its name; free-text columns can hold "
        "any identifier and need review by hand. Expert determination (164.514(b)(1)) is out "
        "of scope.")


def group_names(policy: Policy | None) -> list[str]:
    return [g.name for g in policy.groups] if policy else []


def table_names(policy: Policy | None) -> list[str]:
    return [str(t) for t in policy_tables(policy)] if policy else []


__all__ = ["access_control", "deidentification", "group_names", "minimum_necessary",
           "table_names"]
