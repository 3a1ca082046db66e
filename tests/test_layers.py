"""The package's layers, checked: no module imports from a layer above its own.

Layers, bottom to top (README, Layout). The core (errors, settings, config, schema, warehouse, paths,
redact, faults) is below everything and imports only itself. Every import is checked, at module top
and inside functions; imports inside functions are allowed only where listed in LAZY (with why).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rechub_store

LAYERS = (
    "core",
    "data",
    "models",
    "training",
    "ranking",
    "pipeline",
    "tuning",
    "retrieval",
    "results",
    "publish",
    "spark",  # optional engine (the spark extra): reads data, retrieval, results; only the CLI calls it
    "report",
    "jobs",
    "api",
    "cli",
)
CORE = {"__init__", "errors", "settings", "config", "schema", "warehouse", "paths", "redact", "faults"}
TOP_MODULES = {"__main__": "cli", "api": "api"}  # single-module layers
# (module, imported module): imports inside a function on purpose
LAZY = {
    ("rechub_store.report.charts", "matplotlib.figure"),  # matplotlib loads only when a chart is drawn
    ("rechub_store.report.charts", "matplotlib"),
    ("rechub_store.data", "rechub_store.data"),  # `from rechub_store.data import tables`: torch + Polars
    # scikit-learn takes about 2 s to import: only the item-kNN fit and the report's PCA load it
    ("rechub_store.ranking.itemknn", "sklearn.preprocessing"),
    ("rechub_store.ranking.itemknn", "sklearn.utils.extmath"),
    ("rechub_store.report.data", "sklearn.decomposition"),
    (
        "rechub_store.cli.spark",
        "rechub_store.spark",
    ),  # PySpark (optional extra) loads only for --engine spark
}


def layer_of(module: str, package: str) -> str:
    parts = module.split(".")
    if parts[0] != package:
        raise ValueError(f"{module} is not in {package}")
    if len(parts) == 1:
        return "core"
    head = parts[1]
    if head in TOP_MODULES:
        return TOP_MODULES[head]
    if head in CORE:
        return "core"
    if head not in LAYERS:
        raise ValueError(f"{module}: {head!r} is in no layer; add it to LAYERS or CORE")
    return head


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of the module."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def violations(root: Path) -> list[str]:
    """Every import in the package at `root` that climbs a layer, or hides inside a function."""
    package = root.name
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        here = layer_of(module, package)
        for target, line, in_function in _imports(ast.parse(path.read_text()), module, is_package):
            where = f"{path.relative_to(root.parent)}:{line}"
            if in_function and (module, target) not in LAZY:
                out.append(f"{where}: import of {target} inside a function (move it to the top)")
            if target.split(".")[0] != package:
                continue
            there = layer_of(target, package)
            if LAYERS.index(there) > LAYERS.index(here):  # the core is LAYERS[0]
                out.append(f"{where}: {module} ({here}) imports {target} ({there}), a layer above")
    return out


def test_package_imports_only_downward() -> None:
    assert violations(Path(rechub_store.__file__).parent) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_catches_upward_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "errors.py": "",
            "data/__init__.py": "",
            "data/readers.py": "from pkg.models import net\nfrom pkg.errors import E\n",
            "models/__init__.py": "",
            "models/net.py": "from pkg.data import readers\n",
            "ranking/__init__.py": "",
            "ranking/exact.py": "",
            "training/__init__.py": "",
            "training/fit.py": "def f():\n    from ..ranking import exact\n",
            "warehouse.py": "import pkg.cli.app\n",
            "cli/__init__.py": "",
            "cli/app.py": "from pkg.training import fit\n",
        },
    )
    found = violations(root)
    assert len(found) == 4, found
    assert any("pkg/data/readers.py:1" in v and "a layer above" in v for v in found)
    assert any("pkg/training/fit.py:2" in v and "inside a function" in v for v in found)
    assert any("pkg/training/fit.py:2" in v and "pkg.ranking (ranking)" in v for v in found)
    assert any("pkg/warehouse.py:1" in v and "(core) imports pkg.cli.app (cli)" in v for v in found)


def test_checker_accepts_downward_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "errors.py": "",
            "data/__init__.py": "from . import readers\n",
            "data/readers.py": "from pkg.errors import E\n",
            "cli/__init__.py": "",
            "cli/app.py": "from pkg.data.readers import x\nfrom pkg import errors\nimport json\n",
        },
    )
    assert violations(root) == []
