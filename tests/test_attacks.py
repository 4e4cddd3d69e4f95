"""The attack corpus (tests/attacks/*.yaml, run by tests/attackkit.py): every case is an attack
an agent holding one valid token tries through a real proxy, with real clients, against the
clinic example applied to a real PostgreSQL, and the secure outcome it must meet."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attackkit import Case, load_cases, run_case
from conftest import Database
from policyc.policy.model import Group, RowBudget
from proxyharness import RunningProxy, run_proxy

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attack(case: Case, applied_clinic: Database, proxy: RunningProxy,
                tmp_path: Path) -> None:
    override = {key: case.data[key] for key in ("functions", "rows_over", "budget")
                if key in case.data}
    if not override:
        run_case(case, applied_clinic, proxy)
        return
    # the case needs its group's policy changed: a proxy of its own with that policy
    policy = proxy.policy

    def changed(group: Group) -> Group:
        approval = group.approval
        if "rows_over" in override:
            approval = dataclasses.replace(approval, rows_over=int(override["rows_over"]))
        if "budget" in override:
            budget = override["budget"]
            approval = dataclasses.replace(approval, budget=RowBudget(
                int(budget["rows"]), int(budget.get("per", 3600))))
        return dataclasses.replace(group, approval=approval, functions=tuple(
            override.get("functions", group.functions)))

    groups = tuple(changed(g) if g.name == case.group else g for g in policy.groups)
    with run_proxy(dataclasses.replace(policy, groups=groups),
                   applied_clinic.dsn_as("policyc_proxy"), tmp_path / "own-spool") as own:
        run_case(case, applied_clinic, own)
