"""The package's layers, read from the source: every import of every module under ``skipnet/``
(top-level, function-level and ``TYPE_CHECKING`` alike; relative forms resolved) is an arrow,
and the arrows point down only:

    cli -> export / tune -> tracking / cluster -> fronts -> core -> errors, version

The import graph between skipnet's modules has no cycle (a function-level import does not make
one acceptable), the core imports no ray, mlflow or optuna and nothing above it, and the MLflow
layer (tracking) never imports the search layer (tune). ``test_core_imports.py`` imports the
core for real with those packages blocked."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "skipnet"

#: Each module's layer (its top-level folder, or the module itself at the top), from the bottom.
#: A module imports modules of its own layer or of layers listed before it (a lower rank).
LAYERS = {"skipnet.errors": 0, "skipnet.version": 0, "skipnet.core": 1, "skipnet.fronts": 2, "skipnet.tracking": 3,
          "skipnet.cluster": 3, "skipnet.tune": 4, "skipnet.export": 4, "skipnet.cli": 5, "skipnet.__main__": 6}
#: ``skipnet`` itself (``__init__.py``: the lazy public API) imports only what is listed here, and
#: no module of the package imports it (the version is ``skipnet.version``'s).
ROOT_IMPORTS = {"skipnet.core", "skipnet.version"}
SERVICE = ("skipnet.fronts", "skipnet.tracking", "skipnet.tune", "skipnet.cluster", "skipnet.export", "skipnet.cli")
BANNED_BELOW_SERVICES = ("ray", "mlflow", "optuna")


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = find_modules(ROOT)


def imports_of(name: str, modules: dict[str, Path] = MODULES) -> list[tuple[str, int]]:
    """Every module ``name`` imports, anywhere in its file, with the line: skipnet modules
    resolved to the module itself where ``from package import module`` names one."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # from . import x, from ..y import z
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return found


def build_graph() -> dict[str, dict[str, int]]:
    """skipnet module -> {skipnet module it imports: first line}."""
    graph = {}
    for name in MODULES:
        edges = {}
        for target, line in imports_of(name):
            if target in MODULES and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def third_party(name: str) -> set[str]:
    return {target.split(".")[0] for target, _ in imports_of(name) if not target.startswith("skipnet")}


def layer(name: str) -> str:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{name} is in no layer: put it in a folder of the layout (tests/test_layout.py LAYERS)")


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}                   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} ({MODULES[a].relative_to(ROOT.parent)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])) \
        + f" -> {cycle[-1]}"


GRAPH = build_graph()


def test_the_graph_is_read():
    """The parser sees the arrows it should (so an empty graph cannot pass the tests below)."""
    assert len(MODULES) > 40
    assert "skipnet.tracking.runs" in GRAPH["skipnet.tracking.ui"]              # from ... import (top level)
    assert "skipnet.core.storage" in GRAPH["skipnet.core.checkpoint"]            # function-level
    assert "skipnet.core.models.zoo" in GRAPH["skipnet.core.models"]             # from package import module
    assert "skipnet.core.threads" in GRAPH["skipnet"]


def test_relative_imports_are_resolved(tmp_path):
    pkg = tmp_path / "skipnet" / "a"
    pkg.mkdir(parents=True)
    for rel in ("__init__.py", "a/__init__.py", "a/c.py", "d.py"):
        (tmp_path / "skipnet" / rel).write_text("")
    (pkg / "b.py").write_text("from . import c\nfrom .. import d\nfrom ..d import x\n\ndef f():\n    from .c import y\n")
    (pkg / "__init__.py").write_text("from . import b\n")
    modules = find_modules(tmp_path / "skipnet")
    assert sorted(imports_of("skipnet.a.b", modules)) == [
        ("skipnet.a.c", 1), ("skipnet.a.c", 6), ("skipnet.d", 2), ("skipnet.d", 3)]
    assert imports_of("skipnet.a", modules) == [("skipnet.a.b", 1)]


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {describe(cycle, GRAPH)}"


def test_find_cycle_finds_one():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if name != "skipnet" and not any(
        name == p or name.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"modules outside the layout's folders: {unplaced} (tests/test_layout.py LAYERS)"


def test_arrows_point_down():
    """Each import goes to the module's own layer or one below it; ``skipnet`` itself imports
    only the core and the version, and nothing imports it."""
    wrong = []
    for name, edges in GRAPH.items():
        for target, line in edges.items():
            where = f"{MODULES[name].relative_to(ROOT.parent)}:{line}"
            if name == "skipnet":
                if not any(target == p or target.startswith(p + ".") for p in ROOT_IMPORTS):
                    wrong.append(f"{where}: skipnet/__init__.py imports {target}")
                continue
            if target == "skipnet":
                wrong.append(f"{where}: {name} imports the package root (skipnet/__init__.py)")
                continue
            a, b = layer(name), layer(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{where}: {name} ({a}) imports {target} ({b})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", [n for n in MODULES if n != "skipnet" and layer(n) == "skipnet.core"])
def test_core_imports_no_service_layer_nor_ray_mlflow_optuna(name):
    above = [t for t in GRAPH[name] if t.startswith(SERVICE)]
    assert not above, f"{name} (core) imports {above}"
    banned = third_party(name) & set(BANNED_BELOW_SERVICES)
    assert not banned, f"{name} (core) imports {sorted(banned)}"


@pytest.mark.parametrize("name", [n for n in MODULES if n != "skipnet" and layer(n) == "skipnet.fronts"])
def test_fronts_import_no_ray_mlflow_optuna(name):
    banned = third_party(name) & set(BANNED_BELOW_SERVICES)
    assert not banned, f"{name} (fronts) imports {sorted(banned)}"


@pytest.mark.parametrize("name", [n for n in MODULES if n != "skipnet" and layer(n) == "skipnet.tracking"])
def test_tracking_never_imports_tune(name):
    tune = [t for t in GRAPH[name] if t == "skipnet.tune" or t.startswith("skipnet.tune.")]
    assert not tune, f"{name} (tracking) imports {tune}"
    assert not third_party(name) & {"ray", "optuna"}, f"{name} (tracking) imports ray or optuna"
