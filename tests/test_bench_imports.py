"""bench/ has no import cycle and no bench module imports the harness (bench/run.py): shared
helpers live in bench/common.py.  Pure: reads the sources, imports nothing from bench/."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_imports() -> dict[str, set[str]]:
    """For each bench module, the bench modules it imports anywhere (functions included)."""
    modules = {p.stem: p for p in BENCH.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        graph[name] = found & modules.keys()
    return graph


def test_graph_sees_the_harness_imports() -> None:
    graph = bench_imports()
    assert {"common", "datapath", "hotpath", "applycost", "dbcost"} <= graph["run"]


def test_no_bench_module_imports_the_harness() -> None:
    assert [name for name, deps in bench_imports().items() if "run" in deps] == []


def test_bench_import_graph_is_acyclic() -> None:
    try:
        tuple(TopologicalSorter(bench_imports()).static_order())
    except CycleError as exc:
        raise AssertionError(f"bench/ import cycle: {exc.args[1]}") from None
