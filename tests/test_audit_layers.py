"""Layering of data/ and audit/: reports may import them, never the other way round.

Every import statement (module level and inside functions) of every module under
``src/biomedseg/data`` and ``src/biomedseg/audit`` is read from the source (AST), so an import
hidden in a function that the tests never call is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "biomedseg"

#: Packages (first name below ``biomedseg``) each package may import: its own and rows above it.
_BELOW_DATA = {"core", "metrics", "io", "transforms", "models", "losses", "runtime"}
ALLOWED = {"data": _BELOW_DATA | {"data"}, "audit": _BELOW_DATA | {"data", "audit"}}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = ["biomedseg", package] + list(path.relative_to(SRC / package).with_suffix("").parts)
    if here[-1] == "__init__":
        here = here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _biomedseg_imports(package: str) -> list[tuple[str, int, str]]:
    rows = []
    for path in sorted((SRC / package).rglob("*.py")):
        for line, module in _imports(path, package):
            if module == "biomedseg" or module.startswith("biomedseg."):
                rows.append((str(path.relative_to(SRC)), line, module))
    return rows


@pytest.mark.parametrize("package", ["data", "audit"])
def test_package_never_imports_reports(package):
    bad = [row for row in _biomedseg_imports(package) if row[2].startswith("biomedseg.reports")]
    assert bad == [], f"{package}/ imports reports/ (pass plain data to the report writers): {bad}"


def test_data_never_imports_audit():
    bad = [row for row in _biomedseg_imports("data") if row[2].startswith("biomedseg.audit")]
    assert bad == [], f"data/ imports audit/ (audit sits above data): {bad}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_rows_above(package):
    bad = []
    for file, line, module in _biomedseg_imports(package):
        parts = module.split(".")
        if len(parts) > 1 and parts[1] not in ALLOWED[package]:
            bad.append((file, line, module))
    assert bad == [], f"{package}/ imports from a layer below it: {bad}"


def test_import_scanner_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "audit"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "def f():\n    from biomedseg.reports.html import a\nfrom .y import b\nfrom .. import reports\n"
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    modules = {m for _, m in _imports(pkg / "x.py", "audit")}
    assert "biomedseg.reports.html" in modules
    assert "biomedseg.audit.y" in modules
    assert "biomedseg.reports" in modules
