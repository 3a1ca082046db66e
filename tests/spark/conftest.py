"""One local SparkSession for the whole test session (starting one costs ~15 s), and the small
generated log both engines build from.

The Spark tests skip when PySpark or Java is missing, except with RECHUB_REQUIRE_SPARK=1 (CI),
where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_ENV = "RECHUB_REQUIRE_SPARK"


def _unavailable() -> str | None:
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError as exc:
        return f"the spark extra is not installed ({exc.name})"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (PySpark's local mode needs Java 17+)"
    return None


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    why = _unavailable()
    if why:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"Spark required ({REQUIRE_ENV}=1) but unavailable: {why}")
        pytest.skip(why)
    from rechub_store.spark.session import spark_session

    session = spark_session(threads=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark")
