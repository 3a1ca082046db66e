"""rechub-store: a DuckDB feature store and batch scorer for two-tower recommenders."""

__version__ = "0.1.0"
