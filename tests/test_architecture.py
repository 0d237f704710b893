"""The import rules of docs/design.md, checked on the source: layers point one way, no cycles,
short functions. Module-level and function-level imports count alike."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "biomedseg"

#: package or module (first name under biomedseg) -> row of docs/design.md; a module imports only
#: from its own row or rows above it
LAYERS = {
    "core": 1,
    "metrics": 1,
    "io": 2,
    "transforms": 3,
    "models": 3,
    "losses": 3,
    "runtime": 3,
    "vector": 3,
    "data": 4,
    "audit": 5,
    "engine": 6,
    "runs": 7,
    "stream": 7,
    "planning": 8,
    "postprocess": 8,
    "training": 9,
    "inference": 10,
    "export": 11,
    "reports": 11,
    "trust": 11,
    "workflows": 12,
    "sweeps": 13,
    "cli": 14,
    "napari_plugin": 15,
}
#: GUI toolkits: only the napari plugin (the top layer, the optional extra ``napari``) imports them
GUI_MODULES = ("napari", "npe2", "qtpy", "magicgui", "superqt", "vispy", "PyQt5", "PyQt6", "PySide2", "PySide6")
GUI_PACKAGE = "napari_plugin"
#: cycles allowed (docs/design.md): the model registry imports the families that register themselves
CYCLE_PACKAGES = {"models"}
MAX_FUNCTION_LINES = 80
#: lines of code one top-level package may hold (docs/design.md: a package is one concern)
MAX_PACKAGE_LINES = 2500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``{module: {imported biomedseg modules}}`` over every .py file in src/biomedseg."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, path.name == "__init__.py")
                for a in node.names:  # `from pkg import module` names a module
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {t for t in targets if t.startswith("biomedseg.") and t in modules and t != name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[1]


def test_every_package_has_a_layer():
    tops = {_top(m) for m in import_graph() if m != "biomedseg"}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_no_import_points_up_a_layer():
    upward = []
    for module, targets in import_graph().items():
        if module == "biomedseg":
            continue
        for t in targets:
            if LAYERS[_top(t)] > LAYERS[_top(module)]:
                upward.append(f"{module} -> {t}")
    assert not upward, upward


def test_no_import_cycles_outside_the_model_registry():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    bad = [c for c in cycles if not all(_top(m) in CYCLE_PACKAGES for m in c)]
    assert not bad, bad


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_the_package_root_holds_packages_only():
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert not loose, loose


def test_no_package_is_over_the_size_limit():
    sizes = {
        d.name: sum(len(f.read_text().splitlines()) for f in d.rglob("*.py"))
        for d in PKG.iterdir()
        if d.is_dir() and (d / "__init__.py").exists()
    }
    assert {k: v for k, v in sizes.items() if v > MAX_PACKAGE_LINES} == {}, sizes


def test_no_three_modules_share_a_name_prefix_outside_a_package_of_their_own():
    """``tiling.py, tiling_reading.py, tiling_writing.py`` is a package in disguise: make it one."""
    groups = {}
    for path in PKG.rglob("*.py"):
        if path.name != "__init__.py":
            groups.setdefault((path.parent, path.stem.split("_")[0]), []).append(path.name)
    crowded = {f"{d.relative_to(SRC)}/{prefix}_*": names for (d, prefix), names in groups.items() if len(names) >= 3}
    assert not crowded, crowded


def test_only_the_napari_plugin_imports_napari_or_qt():
    """The core install never needs a GUI toolkit: no package but ``napari_plugin`` imports one
    (``pip install biomedseg`` without the ``napari`` extra works everywhere)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] == GUI_PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] in GUI_MODULES]
    assert not offenders, offenders
