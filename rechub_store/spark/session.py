"""The SparkSession the engine and the scoring job run in: local[N] on one box, or a cluster master."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from rechub_store.errors import UserError

# Semantics first: UTC everywhere (DuckDB's TIMESTAMP is zone-less), size(NULL) = NULL, timestamps
# written as Parquet micros. ANSI arithmetic is off so that BIGINT products wrap mod 2^64, which
# DuckDB's hash() needs (`dialect.SPARK_FUNCTIONS`); the models cast with try_cast and stay far from
# overflow, so nothing else they compute depends on it.
CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.legacy.sizeOfNull": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_session(master: str | None = None, threads: int | None = None, conf: dict[str, Any] | None = None):
    """A SparkSession: `master` (e.g. spark://host:7077, yarn, k8s://...) or local[threads].

    On one box the shuffle width follows the thread count (Spark's default of 200 partitions
    costs seconds per query on small data); on a cluster Spark's adaptive execution sizes it.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this Python (local mode)
    local = master is None or master.startswith("local")
    n = max(1, int(threads or os.cpu_count() or 1))
    builder = SparkSession.builder.master(master or f"local[{n}]").appName("rechub-store")
    settings: dict[str, Any] = dict(CONF)
    if local:
        settings.update(
            {
                "spark.sql.shuffle.partitions": str(n),
                "spark.default.parallelism": str(n),
                "spark.driver.extraJavaOptions": "-Duser.timezone=UTC -XX:+UseSerialGC",
            }
        )
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, bad master URL...
        raise UserError(f"could not start Spark ({master or 'local'}): {str(exc).splitlines()[0]}") from exc
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def sql_path(path: Path | str) -> str:
    return str(path).replace("`", "``")
