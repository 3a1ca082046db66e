"""Build glue that pyproject.toml cannot say: ship the top-level `sql/` folder inside the package.

The SQL models live once in git, at `sql/`. A wheel carries them as `rechub_store/sql/`
(package data of packages whose source folder is `sql/`), where `rechub_store.paths` finds them
once installed, so an installed package needs no checkout. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

SQL_PACKAGES = ["rechub_store.sql", *(f"rechub_store.sql.{p}" for p in find_namespace_packages(where="sql"))]

setup(
    packages=[*find_packages(include=["rechub_store", "rechub_store.*"]), *SQL_PACKAGES],
    package_dir={"rechub_store.sql": "sql"},
    # + the run report's own queries (rechub_store/report/sql/*.sql); package data set in pyproject.toml
    # would replace this mapping, so it lives here
    package_data={**{p: ["*.sql", "*.md"] for p in SQL_PACKAGES}, "rechub_store.report": ["sql/*.sql"]},
)
