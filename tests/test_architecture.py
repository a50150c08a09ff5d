"""The package's import graph, read from the source with `ast` (nothing is imported): no import cycle, and every
module imports only from its own layer or below.

An import counts wherever it is written -- at module level or inside a function -- because a function-level
import hides a cycle rather than removing it; the graph is read by tests/helpers.py (`import_graph`, which
tests/test_stage_deps.py reads too): `from .x import y` imports realmix.x, and realmix.x.y where y is a module;
`importlib.import_module` (the dataset readers' table) imports every module of its package.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from tests.helpers import ROOT, import_graph, module_files

# Low to high: a module may import its own layer and those listed before it. An entry is a module or a package
# (covering its submodules: `realmix.train` is the trainer package). Every module must be
# placed: a new module chooses its layer here.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", ["realmix", "realmix.errors", "realmix.atomic", "realmix.draws", "realmix.hardware",
                     "realmix.distributed", "realmix.metrics", "realmix.images", "realmix.checkpoint",
                     "realmix.runlog", "realmix.charts"]),
    # tensor code: the augmentations a virtual pool's reader computes, so below the store
    ("tensors", ["realmix.augment", "realmix.ops", "realmix.models", "realmix.ema", "realmix.inference"]),
    ("store", ["realmix.store"]),
    ("algorithms", ["realmix.algorithms"]),
    ("training data", ["realmix.data_stream", "realmix.openset"]),
    # params imports the vocabularies (augments, TSA, mix modes, scores, storages) from the code above
    ("params", ["realmix.params"]),
    ("train", ["realmix.train"]),
    ("stages", ["realmix.splits", "realmix.mismatch", "realmix.rename", "realmix.preaugment", "realmix.sources",
                "realmix.evaluate", "realmix.report", "realmix.pool_filter", "realmix.predict", "realmix.summary"]),
    ("pipeline", ["realmix.pipeline"]),
    ("cli", ["realmix.cli"]),
]


def _graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Module -> file, and module -> {imported module: the line of its first import}."""
    graph: dict[str, dict[str, int]] = {}
    for name, imports in import_graph().items():
        edges: dict[str, int] = {}
        for imp in imports:
            if imp.target != name:
                edges.setdefault(imp.target, imp.line)
        graph[name] = edges
    return module_files(), graph


def _where(modules: dict[str, Path], name: str, line: int) -> str:
    return f"{modules[name].relative_to(ROOT)}:{line}"


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def _layer_of(name: str) -> int | None:
    for i, (_, entries) in enumerate(LAYERS):
        # the root package holds only itself: as a prefix it would place every module
        if any(name == e or (e != "realmix" and name.startswith(e + ".")) for e in entries):
            return i
    return None


def test_graph_sees_imports():
    """The reader itself: known edges of each import form are found (an empty graph would pass everything)."""
    _, graph = _graph()
    assert "realmix.errors" in graph["realmix.params"]  # from .errors import RealmixError
    assert "realmix.checkpoint" in graph["realmix.inference"]  # from . import checkpoint as ckpt
    assert "realmix.ops" in graph["realmix.algorithms.mixmatch"]  # from ..ops import ...
    assert "realmix.algorithms.base" in graph["realmix.algorithms"]  # a package __init__ importing a submodule
    assert "realmix.train" in graph["realmix.pipeline"]  # a function-level import


def test_no_import_cycle():
    modules, graph = _graph()
    cycle = _find_cycle(graph)
    if cycle:
        steps = "\n".join(f"  {_where(modules, a, graph[a][b])}: {a} imports {b}" for a, b in pairwise(cycle))
        pytest.fail(f"import cycle: {' -> '.join(cycle)}\n{steps}", pytrace=False)


def test_every_module_has_a_layer():
    modules, _ = _graph()
    unplaced = [m for m in modules if _layer_of(m) is None]
    assert not unplaced, f"modules missing from LAYERS in {Path(__file__).name}: {', '.join(unplaced)}"
    entries = [e for _, es in LAYERS for e in es]
    stale = [e for e in entries if not any(m == e or m.startswith(e + ".") for m in modules)]
    assert not stale, f"LAYERS names modules that do not exist: {', '.join(stale)}"
    assert len(entries) == len(set(entries)), "LAYERS places a module twice"


def test_imports_point_down():
    modules, graph = _graph()
    upward = []
    for name, edges in graph.items():
        low = _layer_of(name)
        for target, line in edges.items():
            high = _layer_of(target)
            if low is not None and high is not None and high > low:
                upward.append(f"  {_where(modules, name, line)}: {name} ({LAYERS[low][0]}) imports {target} "
                              f"({LAYERS[high][0]})")
    if upward:
        pytest.fail("imports against LAYERS (a module may import its own layer and lower ones):\n" + "\n".join(upward),
                    pytrace=False)
