"""Past one machine: the same `sql/` models on Spark SQL over a Parquet lake, and scoring as a Spark job.

Optional: `pip install 'rechub-store[spark]'` brings PySpark and SQLGlot. The CLI
(`rechub_store/cli/spark.py`) imports `lake` at load time (DuckDB only, for `ingest --lake`) and
the other modules only inside the `--engine spark` functions, so the default install (DuckDB on
one box) never loads PySpark. `lake` and `manifest` need neither PySpark nor SQLGlot.

- `lake`: the lake's layout; raw batches exported from the warehouse as Parquet, once each.
- `manifest`: the published table set of the lake, switched by one atomic rename.
- `dialect`: DuckDB SQL -> Spark SQL steps (SQLGlot plus the rules it lacks).
- `session`: the SparkSession (local[N] or a cluster master).
- `engine`: `build-features --engine spark`: models, audits, manifest switch.
- `scoring`: `score --engine spark`: top-k per user partition with mapInArrow.
"""
