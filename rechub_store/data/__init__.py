"""The data layer: ingest, the SQL model runner, readers, and the feature store for your own code.

Public: `FeatureTables` (tables as Polars DataFrames, samples as torch datasets), `SampleDataset`,
`SampleStream` and `collate`, from `rechub_store.data.tables`. They are loaded on first use, so that
ingest and the SQL runner (which import this package) never pay for torch and Polars.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FeatureTables", "SampleDataset", "SampleStream", "collate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rechub_store.data import tables  # lazy on purpose: torch and Polars (see above)

        return getattr(tables, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
