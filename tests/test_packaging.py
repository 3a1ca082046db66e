"""What a fresh install relies on: dependencies that are true, a wheel that carries its SQL models,
and the entry points (`rechub-store --version`, `python -m rechub_store`).

The whole path (wheel -> empty virtualenv -> `rechub-store demo` from a folder outside the checkout)
is exercised by `.ci/run`; these tests check its parts quickly."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rechub_store
from rechub_store.cli import app
from rechub_store.data.sqlmodels import AUDIT_DIR, METRICS_DIR, SEED_DIR

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Runtime dependencies the package never imports by name, and why each is still needed.
LOADED_INDIRECTLY = {
    # SQLAlchemy's `duckdb://` dialect, loaded by URL: `publish --to duckdb:///file.duckdb` and the
    # README's analyst example (`sa.create_engine("duckdb:///warehouse/analytics.duckdb...")`).
    "duckdb-engine",
}


def _norm(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]


def _top_level_imports(folder: Path) -> dict[str, Path]:
    """Absolute imports' top-level module -> one file importing it (relative imports skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def _third_party(folder: Path, local: set[str]) -> dict[str, tuple[set[str], Path]]:
    """Third-party top-level modules imported under folder -> (their distributions, a file).

    A module no installed distribution provides (e.g. a bench-only one) is taken to share its
    distribution's name, so an undeclared one still fails the checks below.
    """
    dists = importlib.metadata.packages_distributions()
    out = {}
    for module, path in _top_level_imports(folder).items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        out[module] = ({_norm(d) for d in dists.get(module, [module])}, path)
    return out


def _local_modules(folder: Path) -> set[str]:
    return {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}


RUNTIME = _requirement_names(PYPROJECT["project"]["dependencies"])
EXTRAS = {k: _requirement_names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}


SPARK_PACKAGE = ROOT / "rechub_store" / "spark"  # the one place the spark extra may be imported


def test_every_package_import_is_a_declared_dependency() -> None:
    for module, (dists, path) in _third_party(ROOT / "rechub_store", {"rechub_store"}).items():
        allowed = RUNTIME | EXTRAS["spark"] if path.is_relative_to(SPARK_PACKAGE) else RUNTIME
        assert dists & allowed, (
            f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(dists))}), "
            "which is not in pyproject.toml's dependencies"
        )
    # the spark extra only under rechub_store/spark/ (files elsewhere are checked against RUNTIME above)


def test_every_declared_dependency_is_used() -> None:
    imported = set().union(*(d for d, _ in _third_party(ROOT / "rechub_store", {"rechub_store"}).values()))
    unused = RUNTIME - imported - LOADED_INDIRECTLY
    assert not unused, f"declared in pyproject.toml but never imported by rechub_store: {sorted(unused)}"
    assert LOADED_INDIRECTLY <= RUNTIME
    spark = set().union(*(d for d, _ in _third_party(SPARK_PACKAGE, {"rechub_store"}).values()))
    spark |= {"pandas"}  # required by PySpark's mapInArrow (spark/scoring.py), never imported by us
    assert EXTRAS["spark"] <= spark, (
        f"spark extra not imported by rechub_store/spark: {EXTRAS['spark'] - spark}"
    )


def test_default_path_never_imports_pyspark(tmp_path: Path) -> None:
    """The CLI, a DuckDB build and the package's modules outside rechub_store/spark load no PySpark
    or SQLGlot (they are the optional spark extra); and the CLI starts without scikit-learn (2 s of
    imports, loaded only by the item-kNN fit and the report's PCA)."""
    code = (
        "import sys, pkgutil, importlib, rechub_store\n"
        "from typer.testing import CliRunner\n"
        "from rechub_store.cli import app\n"
        "assert 'sklearn' not in sys.modules, 'the CLI imports scikit-learn at start'\n"
        "for m in pkgutil.walk_packages(rechub_store.__path__, 'rechub_store.'):\n"
        "    if not m.name.startswith('rechub_store.spark'): importlib.import_module(m.name)\n"
        "r = CliRunner().invoke(app, ['generate', 'data', '--users', '30', '--items', '20',"
        " '--events', '400', '--ingest'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['build-features'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('pyspark', 'sqlglot', 'py4j'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "RECHUB_WAREHOUSE": str(tmp_path / "wh" / "rechub.duckdb"), "RECHUB_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr


def test_tests_and_benchmarks_import_only_what_their_extras_declare() -> None:
    for folder, allowed in (
        ("tests", RUNTIME | EXTRAS["dev"] | EXTRAS["spark"]),
        ("bench", RUNTIME | EXTRAS["bench"] | EXTRAS["spark"]),
    ):
        # bench/ borrows the tests' helpers (tests/pgserver.py) through sys.path
        local = _local_modules(ROOT / folder) | _local_modules(ROOT / "tests") | {"rechub_store"}
        for module, (dists, path) in _third_party(ROOT / folder, local).items():
            assert dists & allowed, f"{path.relative_to(ROOT)} imports {module}, not declared for {folder}/"


def test_version_has_one_source() -> None:
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    version = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "rechub_store.__version__"}
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"rechub-store {rechub_store.__version__}\n"


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "RECHUB_WAREHOUSE": str(tmp_path / "wh" / "rechub.duckdb")}
    run = subprocess.run(
        [sys.executable, "-m", "rechub_store", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert (
        "Usage: rechub-store" in run.stdout
        and "build-features" in run.stdout
        and "--models-dir" in run.stdout
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the build reads (so no stale build/ folder is reused
    and the checkout is not written to)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("rechub_store", "sql"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("rechub_store-*.whl")
    return path


def test_wheel_ships_the_sql_models(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("rechub_store/sql/") for n in names if n.startswith("rechub_store/sql/"))
    in_git = sorted(p.relative_to(ROOT / "sql").as_posix() for p in (ROOT / "sql").rglob("*") if p.is_file())
    assert shipped == in_git and any(n.endswith(".sql") for n in shipped)
    assert f"rechub_store-{rechub_store.__version__}.dist-info/METADATA" in names
    assert not [
        n for n in names if n.startswith(("sql/", "tests/", "jobs/", "bench/"))
    ]  # nothing at top level


def test_installed_package_finds_its_sql_inside_itself(wheel: Path, tmp_path: Path) -> None:
    """Unpacked like an install (no checkout around it): the models come from the package folder."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from rechub_store.paths import SQL_DIR; from rechub_store.data.sqlmodels import METRICS_DIR, "
        "discover; print(SQL_DIR); print(len(discover())); print(len(discover(only=METRICS_DIR)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert run.returncode == 0, run.stderr
    sql_dir, count, metric_count = run.stdout.split()
    assert Path(sql_dir) == site / "rechub_store" / "sql"
    files = [p.relative_to(ROOT / "sql").parts[0] for p in (ROOT / "sql").rglob("*.sql")]
    assert int(count) == len([top for top in files if top not in (AUDIT_DIR, METRICS_DIR, SEED_DIR)])
    assert int(metric_count) == files.count("metrics") > 0


def test_wheel_ships_the_report_queries(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "rechub_store" / "report" / "sql"
    queries = {f"rechub_store/report/sql/{p.name}" for p in folder.glob("*.sql")}
    assert queries and queries <= names
