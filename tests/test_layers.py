"""The package's architecture: subpackages in layers, no import circle, no upward import, small
files. The imports are read with ``ast`` (every import statement, also inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "curvext"

#: bottom to top; a module may import from its own layer and the layers below it.
LAYERS = {
    "_ops": 0, "utils": 0,
    "linalg": 1, "autodiff": 1, "data": 1,
    "curvature": 2,
    "geometry": 3,
    "adversarial": 4,
    "detection": 5,
    "evaluation": 6, "sweep": 6, "training": 6,
    "commands": 7,
    "cli": 8,
}
TOP_LEVEL_MODULES = {"__init__.py", "_ops.py", "cli.py"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, as_module: str | None = None) -> set[str]:
    """The curvext modules ``path`` imports (``from a import b`` counts as ``a.b`` when b is a
    module); ``as_module`` names a file outside the package as if it were that module."""
    found = set()
    name = as_module or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "curvext")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "curvext":
                continue
            for alias in node.names:
                if alias.name == "_C":
                    continue  # the compiled extension
                full = f"{base}.{alias.name}"
                found.add(full if is_module(full) else base)
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def upward_imports(module: str, imported: set[str]) -> list[str]:
    own = layer_of(module)
    assert own is not None, f"{module} belongs to no layer of {sorted(LAYERS)}"
    return sorted(i for i in imported if i != "curvext" and (layer_of(i) or 0) > own)


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Subpackage -> the other subpackages its modules import (e.g. linalg -> {_ops})."""
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        if module == "curvext":
            continue
        own = module.split(".")[1]
        out.setdefault(own, set()).update(i.split(".")[1] for i in imported
                                          if i != "curvext" and i.split(".")[1] != own)
    return out


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> imported modules) as a closed path, or None."""
    state: dict[str, int] = {}  # 1 on the depth-first stack, 2 finished
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target in graph and state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target in graph and target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return None

    for module in graph:
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_has_a_layer():
    for module in GRAPH:
        if module != "curvext":
            assert layer_of(module) is not None, f"{module} belongs to no layer of {sorted(LAYERS)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "curvext"))
def test_no_upward_import(module):
    upward = upward_imports(module, GRAPH[module])
    assert not upward, f"{module} (layer {layer_of(module)}) imports from layers above it: {upward}"


def test_no_import_circle():
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_circle_between_subpackages():
    """Two subpackages of one layer (linalg, autodiff, data; evaluation, sweep, training) may
    import each other, but only one way round."""
    circle = find_circle(subpackage_graph(GRAPH))
    assert circle is None, "subpackages import each other: " + " -> ".join(circle)


def test_the_checks_find_a_planted_upward_import_and_circle(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("from curvext.utils import atomic_files\n\n\n"
                       "def f():\n    from curvext.detection import detector\n")
    imported = imports_of(planted, as_module="curvext.utils.x")
    assert imported == {"curvext.utils.atomic_files", "curvext.detection.detector"}
    assert upward_imports("curvext.utils.x", imported) == ["curvext.detection.detector"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    planted_pair = {"curvext.sweep.x": {"curvext.evaluation.y"}, "curvext.evaluation.y": {"curvext.sweep.z"}}
    assert find_circle(subpackage_graph(planted_pair)) in (["evaluation", "sweep", "evaluation"],
                                                           ["sweep", "evaluation", "sweep"])


def test_few_modules_at_the_top_level():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"modules beside the subpackages: {sorted(top - TOP_LEVEL_MODULES)}"


@pytest.mark.parametrize("folder", ["curvext", "tests", "benchmarks"])
def test_files_stay_small(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
