"""The package's import graph, built from the code: no circles, and no module imports one of a higher layer.

Why: a circle makes import order matter (a half-initialised module, ``TYPE_CHECKING`` and in-function imports
to dodge it) and ties modules that should be readable one at a time; an upward import (``io`` needing the
pictures, ``model`` needing the batch) drags a heavy or unrelated part into a light one (the Slicer module and
``segment`` use ``io`` and ``model``, and must not pull in plotting or training). Every import counts, wherever it
stands: top of a file, inside a function or under ``if TYPE_CHECKING:``, since each is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "MONAIUNetSeg" / "monaiunetseg"
PACKAGE = "monaiunetseg"
GLUE_DIR = REPO / "MONAIUNetSeg" / "MONAIUNetSegLib"  # the Slicer glue: not layered, but circles count there too
GLUE = "MONAIUNetSegLib"

# Lower layers never import higher ones; modules of one layer may import each other (acyclically). A key names a
# module or a subpackage (and so every module under it; the top package's key names only its __init__); the longest
# matching key wins. A new top-level module or subpackage has no layer until it is given one here.
LAYERS: dict[str, int] = {
    # 0: plain helpers, each standing alone (the package __init__ holds only the version and the tool's name)
    "monaiunetseg": 0,
    "monaiunetseg.errors": 0,
    "monaiunetseg.files": 0,
    "monaiunetseg.geometry": 0,
    "monaiunetseg.labels": 0,
    "monaiunetseg.console": 0,
    # 1: reading and writing scans and labelmaps
    "monaiunetseg.io": 1,
    # 2: the network and inference; and the scores of a segmentation, which use the model's post-processing
    "monaiunetseg.model": 2,
    "monaiunetseg.metrics": 2,
    # 2: whether to trust a result (prediction signals the runners gather, input checks, the verdict)
    "monaiunetseg.trust": 2,
    "monaiunetseg.measure": 2,  # measurements of a labelmap and their change (reads files with io)
    # 3: pictures (evaluation panels, overlays, summary figures)
    "monaiunetseg.visual": 3,
    # 4: the jobs built on the above
    "monaiunetseg.training": 4,
    "monaiunetseg.batch": 4,
    "monaiunetseg.node": 4,  # the DICOM node: receives, runs the batch, sends (imports batch, never the reverse)
    # 5: the command line, which registers every job
    "monaiunetseg.cli": 5,
}


def module_name(path: Path, root: Path, package: str) -> str:
    """``root/a/b.py`` -> ``package.a.b``; a package's ``__init__.py`` is the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def find_modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``a.b.func`` -> ``a.b``), or None if not ours."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``module`` imports, anywhere in its file (functions, ``TYPE_CHECKING`` included).

    ``from pkg.x import y`` imports module ``pkg.x.y`` when that is a module, else ``pkg.x`` (``y`` is a name in it).
    A string that is exactly the dotted name of one of our modules counts too: it is there for ``importlib``
    (``cli.INFERENCE_COMMANDS``).
    """
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, module, is_package)
            names = [f"{source}.{alias.name}" if alias.name != "*" else source for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            names = [node.value] if node.value in modules else []
        else:
            continue
        for name in names:
            target = _known(name, modules)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph(root: Path = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = find_modules(root, package)
    return {m: imports_of(m, modules) for m in modules}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module, as a path ``a -> b -> ... -> a``."""
    return [_cycle_in(graph, set(c), c[0]) for c in tangles(graph)]


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module: each module in one reaches every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm (the package is small: recursion depth is no concern)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest path from ``start`` back to itself inside one strongly connected component."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no circle in {sorted(component)}")


def layer_of(module: str, layers: dict[str, int] = LAYERS) -> int | None:
    """The layer of the longest key of ``layers`` that is ``module`` or a subpackage above it (not the top package:
    that would give every module a layer, and an unplaced one would go unnoticed)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        key = ".".join(parts[:n])
        if key in layers:
            return layers[key]
    return layers.get(module)


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int] = LAYERS) -> list[str]:
    return [f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
            for a in sorted(graph) for b in sorted(graph[a])
            if layer_of(b, layers) > layer_of(a, layers)]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_every_kind_of_import(graph: dict[str, set[str]]) -> None:
    """The graph is built from real imports: top-level, in-function and submodule-as-name ones all show."""
    assert len(graph) > 40
    assert "monaiunetseg.batch.options" in graph["monaiunetseg.batch.run"]  # top of the file
    assert "monaiunetseg.model.predictor" in graph["monaiunetseg.batch.run"]  # inside a function
    assert "monaiunetseg.model.onnx_proto" in graph["monaiunetseg.model.unet_graph"]  # from package import module
    assert "monaiunetseg" in graph["monaiunetseg.batch.report"]  # the package __init__ (TOOL_NAME)
    assert "monaiunetseg.batch.cases" in graph["monaiunetseg.batch.naming"]  # under TYPE_CHECKING
    assert "monaiunetseg.batch.single" in graph["monaiunetseg.cli"]  # by name, for importlib


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    found = [f"{' -> '.join(_cycle_in(graph, set(c), c[0]))}  (tangled: {', '.join(c)})" for c in tangles(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_import_circles_in_the_slicer_glue() -> None:
    """MONAIUNetSegLib has no circles either: the glue modules go one way,
    ``mrml`` below ``segmentations`` and ``markups``, ``processes`` below ``jobs``."""
    glue = import_graph(GLUE_DIR, GLUE)
    assert len(glue) >= 8 and "MONAIUNetSegLib.mrml" in glue["MONAIUNetSegLib.markups"]
    assert "MONAIUNetSegLib.processes" in glue["MONAIUNetSegLib.jobs"]
    found = [" -> ".join(_cycle_in(glue, set(c), c[0])) for c in tangles(glue)]
    assert not found, "import circles in the Slicer glue:\n" + "\n".join(found)
    assert "MONAIUNetSegLib.segmentations" not in glue["MONAIUNetSegLib.markups"]  # the circle issue 31 found


def test_no_upward_imports(graph: dict[str, set[str]]) -> None:
    upward = upward_imports(graph)
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_checks_catch_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks themselves fail where they should: a TYPE_CHECKING circle, a relative in-function upward import."""
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "high" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low.b import X\n")
    (pkg / "low" / "b.py").write_text("from pkg.low import a\nX = 1\n")
    (pkg / "low" / "c.py").write_text("def f():\n    from ..high import d\n")
    (pkg / "high" / "d.py").write_text("import pkg.low.c\n")
    (pkg / "low" / "e.py").write_text("import importlib\nD = importlib.import_module('pkg.high.d')\n")
    g = import_graph(pkg, "pkg")
    assert g["pkg.low.a"] == {"pkg.low.b"} and g["pkg.low.b"] == {"pkg.low.a"}
    assert g["pkg.low.c"] == {"pkg.high.d"} and g["pkg.high.d"] == {"pkg.low.c"} and g["pkg.low.e"] == {"pkg.high.d"}
    assert sorted(find_cycles(g)) == [["pkg.high.d", "pkg.low.c", "pkg.high.d"], ["pkg.low.a", "pkg.low.b", "pkg.low.a"]]
    layers = {"pkg": 0, "pkg.low": 0, "pkg.high": 1}
    assert layer_of("pkg.other", layers) is None
    assert upward_imports(g, layers) == ["pkg.low.c (layer 0) imports pkg.high.d (layer 1)",
                                         "pkg.low.e (layer 0) imports pkg.high.d (layer 1)"]
